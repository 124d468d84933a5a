class Queue:
    def __init__(self):
        self.items = []

    def insert(self, item):
        self.items.append(item)

    def remove(self):
        if not self.items:
            raise ValueError("empty queue")
        return self.items.pop(0)
