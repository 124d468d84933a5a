"""Randomness: inputs come from the seeded ``gradelib.rand``; the student's use of ``random``
is seeded identically in the staff run and the student run, so equal code gives equal output."""

import gradelib

grader = gradelib.Grader()
grader.add_input_check(gradelib.must_define_function("pick_winner"))
grader.add_input_check(gradelib.required_substring("random"))

NAMES = ["ada", "alan", "grace", "edsger", "barbara", "donald", "margaret", "ken"]

for size in (2, 4, 8):
    players = gradelib.rand.sample(NAMES, size)
    grader.add_test(gradelib.InvokeStudentFunctionTest("pick_winner", [players]))
