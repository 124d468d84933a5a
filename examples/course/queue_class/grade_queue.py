"""Classes: a FIFO ``Queue`` with ``insert`` and ``remove``; tests come from a class."""

import gradelib

grader = gradelib.Grader()
grader.add_input_check(gradelib.must_define_class("Queue"))
grader.add_input_check(gradelib.required_class_method("Queue", "insert"))
grader.add_input_check(gradelib.required_class_method("Queue", "remove"))


class Tests:
    def test_first_in_first_out(self, submission):
        """q = Queue(); q.insert(1); q.insert(2); q.remove(); q.remove()"""
        q = submission.Queue()
        q.insert(1)
        q.insert(2)
        print(q.remove(), q.remove())

    def test_remove_from_empty(self, submission):
        """Removing from an empty queue raises ValueError."""
        q = submission.Queue()
        try:
            q.remove()
        except ValueError:
            print("ValueError raised")
        else:
            grader.end_test("remove() on an empty queue should raise ValueError")

    def test_many_items(self, submission):
        """Insert 100 items, remove them all."""
        q = submission.Queue()
        for i in range(100):
            q.insert(i)
        print([q.remove() for _ in range(100)] == list(range(100)))


grader.add_tests_from_class(Tests)
