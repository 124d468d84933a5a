"""Functions: the student writes ``square(x)``; each test calls it and prints the result."""

from grader_support import gradelib

grader = gradelib.Grader()
grader.add_input_check(gradelib.must_define_function("square"))

for value in (0, 3, -4, 2.5, 10**6):
    grader.add_test(gradelib.InvokeStudentFunctionTest("square", [value]))
