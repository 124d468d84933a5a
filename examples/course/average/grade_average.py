"""Input checks and a custom comparison: ``average(numbers)`` without ``sum``, compared with a
tolerance (in a separate sandboxed process that never runs student code)."""

import gradelib

grader = gradelib.Grader()
grader.add_input_check(gradelib.must_define_function("average"))
grader.add_input_check(gradelib.prohibited_keyword("sum", "Please compute the total with a loop, not sum()."))
grader.add_input_check(gradelib.required_keyword("for"))
grader.add_input_check(gradelib.count_non_comment_lines(at_most=15))


def close_enough(expected, actual):
    try:
        return abs(float(expected) - float(actual)) < 1e-6
    except ValueError:
        raise gradelib.EndTest("your function should return a number") from None


for numbers in ([1, 2, 3, 4], [2.5], [10, -10, 7]):
    grader.add_test(gradelib.InvokeStudentFunctionTest(
        "average", [numbers], output_writer=gradelib.round_float_writer(4), compare=close_enough,
    ))
