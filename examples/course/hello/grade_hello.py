"""Printing: top-level code (no function) wrapped in a string and executed by the tests."""

import gradelib

grader = gradelib.Grader()
grader.add_preprocessor(gradelib.wrap_in_string)
grader.add_input_check(gradelib.required_keyword("print"))
grader.add_input_check(gradelib.prohibited_substring("import os", "Please do not import os here."))

grader.add_test(gradelib.Test(gradelib.exec_wrapped_code(), "Test: greeting for the default name"))
grader.add_test(gradelib.Test(
    gradelib.exec_wrapped_code(environment={"name": "Ada"}),
    "Test: greeting for 'Ada'",
    "The variable name is set to 'Ada' before your code runs.",
))
grader.add_test(gradelib.Test(
    gradelib.exec_code_and_inspect_values(environment={"name": "Grace"}, vars_to_inspect=["greeting"]),
    "Test: the variable greeting",
))
