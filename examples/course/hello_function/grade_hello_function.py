"""Functions returning strings (the problem the local demo submits to): ``hello(name)``."""

from grader_support import gradelib

grader = gradelib.Grader()
grader.add_input_check(gradelib.must_define_function("hello"))

for name in ("World", "Ada", ""):
    grader.add_test(gradelib.InvokeStudentFunctionTest("hello", [name]))
