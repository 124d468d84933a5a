# The tests may define ``name`` before this code runs.
name = globals().get("name", "World")
greeting = "Hello, " + name + "!"
print(greeting)
