"""One test calling the student's attempt(); the student code performs the abuse inside it."""

import gradelib

grader = gradelib.Grader()
grader.add_test(gradelib.InvokeStudentFunctionTest("attempt", []))
