"""The verdict of the demos (``make run``, the kind demo Job) on the three grades: pure logic."""

from __future__ import annotations

from typing import Any

from xqueue_server.demo import SUBMISSIONS, check_results

CORRECT, INCORRECT, BROKEN = SUBMISSIONS


def grade(score: Any, correct: Any) -> dict[str, Any]:
    return {"score": score, "correct": correct, "msg": "<p>...</p>"}


def test_the_expected_grades_pass() -> None:
    assert check_results([(CORRECT, grade(1.0, True)), (INCORRECT, grade(0.0, False)),
                          (BROKEN, grade(0, False))]) == []


def test_wrong_or_missing_grades_are_each_reported() -> None:
    problems = check_results([(CORRECT, grade(0.5, True)), (INCORRECT, grade(1, True)), (BROKEN, None)])
    assert problems == ["correct: expected score=1 correct=True, got score=0.5 correct=True",
                        "incorrect: expected correct=False, got correct=True",
                        "broken: no grade received"]


def test_a_correct_flag_without_score_one_or_a_string_body_fails() -> None:
    assert check_results([(CORRECT, grade("1", True))])
    assert check_results([(CORRECT, grade(1, "True"))])
    assert check_results([(INCORRECT, "not json")]) == ["incorrect: no grade received"]
