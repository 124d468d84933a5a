"""Input checks a submission can break: one raises on non-ASCII text, one backtracks forever."""

import re

import gradelib

grader = gradelib.Grader()


def ascii_only(code):
    code.encode("ascii")  # raises UnicodeEncodeError for non-ASCII submissions
    return None


def no_aaa(code):
    # Catastrophic backtracking on long runs of 'a' not followed by the end of the text.
    return "too many a" if re.match(r"(a+)+$", code.strip()) else None


grader.add_input_check(ascii_only)
grader.add_input_check(no_aaa)
grader.add_test(gradelib.InvokeStudentFunctionTest("attempt", []))
