"""Our gradelib implementation: the public API course graders rely on (called in-process)."""

from __future__ import annotations

import types

import pytest

from xqueue_grader.runtime import gradelib
from xqueue_grader.runtime.harness import BoundedText, captured_stdout


def module(**attrs: object) -> types.ModuleType:
    mod = types.ModuleType("submission")
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


def output_of(test: gradelib.Test, submission: types.ModuleType) -> str:
    with captured_stdout(10_000) as out:
        test(submission)
    return out.getvalue()


def test_substring_checks_use_the_original_messages() -> None:
    assert gradelib.required_substring("while")("for x in y: pass") == "Your code should contain 'while'."
    assert gradelib.required_substring("while")("while True: pass") is None
    assert gradelib.prohibited_substring("eval")("eval('1')") == "Your code should not contain 'eval'."
    assert gradelib.prohibited_substring("eval", "no eval!")("eval(1)") == "no eval!"


def test_keyword_checks_ignore_comments_and_strings() -> None:
    code = "# for loop in a comment\ns = 'for'\nwhile False:\n    pass\n"
    assert gradelib.required_keyword("for")(code) == 'Your code must make use of the "for" keyword.'
    assert gradelib.prohibited_keyword("while")(code) == 'Your code cannot make use of the "while" keyword.'
    assert gradelib.prohibited_keyword("for")(code) is None
    assert gradelib.prohibited_operator is gradelib.prohibited_keyword
    assert gradelib.required_operator is gradelib.required_keyword
    assert gradelib.one_of_required_keywords(["for", "while"])(code) is None
    assert gradelib.one_of_required_keywords(["lambda", "yield"])(code) == (
        "Your code must make use of at least one of the following keywords: ['lambda', 'yield'].")
    # code that does not tokenize counts zero occurrences instead of crashing the check
    assert gradelib.required_keyword("for")("s = '''unterminated") is not None


def test_occurrence_checks() -> None:
    code = "x = 1\nx = 2\n# x = 3\n"
    assert gradelib.substring_occurs("x =", exactly=3)(code) is None
    assert gradelib.substring_occurs("x =", at_most=2)(code) == "Your code has 'x =' 3 times, can't be more than 2."
    assert gradelib.token_occurs("x", exactly=3)(code) == "Your code has 'x' 2 times, must be exactly 3."
    assert gradelib.token_occurs("x", at_least=3)(code) == "Your code has 'x' 2 times, must be at least 3."
    assert gradelib.substring_occurs("a b", exactly=1, ignore_spacing=True)("ab") is None
    assert gradelib.substring_occurs_if_condstring("y", "import", exactly=1)(code) is None
    assert gradelib.count_non_comment_lines(at_most=1)(code) == "Your code has None 2 times, can't be more than 1."
    assert gradelib.count_non_comment_lines(exactly=2)('"""doc"""\n' + code) is None


def test_definition_checks() -> None:
    code = "class Queue(object):\n    def insert(self, x):  # add\n        pass\n\ndef helper():\n    pass\n"
    assert gradelib.must_define_function("helper")(code) is None
    assert gradelib.must_define_function("main")(code) == "Your code must define a function named 'main'."
    assert gradelib.prohibited_function_definition("helper")(code) == (
        "Your code should NOT define a function named 'helper'.")
    assert gradelib.must_define_class("Queue")(code) is None
    missing = gradelib.must_define_class("Stack")(code)
    assert missing is not None and missing.startswith("Your code must define a class named 'Stack'.")
    assert gradelib.required_class_method("Queue", "insert")(code) is None
    assert gradelib.required_class_method("Queue", "remove")(code) == (
        "The class named 'Queue' should define a method named remove.")
    assert gradelib.prohibited_class_method("Queue", "insert")(code) == (
        "The class named 'Queue' should not define a method named insert.")
    either = gradelib.input_check_or("need one", gradelib.must_define_function("a"),
                                     gradelib.must_define_function("helper"))
    assert either(code) is None
    assert gradelib.input_check_or("need one", gradelib.must_define_function("a"))(code) == "need one"


def test_grader_collects_checks_and_preprocesses_in_order() -> None:
    grader = gradelib.Grader()
    grader.add_input_check(gradelib.required_substring("x"))
    grader.add_input_check(gradelib.required_substring("y"))
    assert grader.input_errors("x") == ["Your code should contain 'y'."]
    grader.add_preprocessor(gradelib.wrap_in_string)
    assert grader.preprocess("a\r\nb") == "submission_code = 'a\\nb'"


def test_tests_from_class_are_sorted_named_and_share_compare() -> None:
    class Tests:
        def test_b_second(self, sub: types.ModuleType) -> None:
            print("b")

        def test_a_first(self, sub: types.ModuleType) -> None:
            """Docstring becomes the long description."""
            print("a")

        def helper(self) -> None:
            raise AssertionError("not a test")

        def compare_results(self, expected: str, actual: str) -> bool:
            return expected.upper() == actual.upper()

    grader = gradelib.Grader()
    grader.add_tests_from_class(Tests)
    tests = grader.tests()
    assert [t.short_description for t in tests] == ["Test: a first", "Test: b second"]
    assert tests[0].detailed_description == "Docstring becomes the long description."
    assert tests[1].detailed_description is None
    assert tests[0].compare_results("ab", "AB")
    assert not gradelib.has_default_comparison(tests[0])


def test_invoke_student_function_test() -> None:
    test = gradelib.InvokeStudentFunctionTest("add", [1, "x"])
    assert test.short_description == "Test: add(1, 'x')"
    assert gradelib.has_default_comparison(test)
    assert output_of(test, module(add=lambda a, b: f"{a}{b}")) == "'1x'\n"
    rounded = gradelib.InvokeStudentFunctionTest("f", [], output_writer=gradelib.round_float_writer(2),
                                                 environment={"K": 3}, short_desc="custom")
    sub = module()
    sub.f = lambda: sub.K / 7  # type: ignore[attr-defined]
    assert rounded.short_description == "custom"
    assert output_of(rounded, sub) == "0.43\n"


def test_exec_wrapped_code_and_inspect_values() -> None:
    sub = module(submission_code="print('hi', n)\nresult = n * 2\n")
    assert output_of(gradelib.Test(gradelib.exec_wrapped_code({"n": 2}), "t"), sub) == "hi 2\n\n"
    shouted = gradelib.exec_wrapped_code({"n": 1}, post_process=str.upper)
    assert output_of(gradelib.Test(shouted, "t"), sub) == "HI 1\n\n"
    inspect = gradelib.exec_code_and_inspect_values({"n": 5}, ["result", "missing"])
    assert output_of(gradelib.Test(inspect, "t"), sub) == "10\nname 'missing' is not defined\n"


def test_end_test_prints_and_raises_and_counts() -> None:
    grader = gradelib.Grader()
    with captured_stdout(1000) as out, pytest.raises(gradelib.EndTest):
        grader.end_test("bad input")
    assert out.getvalue() == "*** Error: bad input\n"
    assert grader.uncaught_end_tests() == 1
    grader.caught_end_test()
    assert grader.uncaught_end_tests() == 0


def test_bounded_capture_keeps_the_first_part() -> None:
    buffer = BoundedText(5)
    buffer.write("abc")
    buffer.write("defgh")
    assert buffer.getvalue() == "abcde" and buffer.dropped == 3
