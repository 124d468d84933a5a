"""The example course graded end to end through the real sandbox (staff run, student run, comparison)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xqueue_grader import results as R
from xqueue_grader.engine import GradingEngine
from xqueue_grader.protocol import Submission

from .helpers import EXAMPLES, TEST_LIMITS, grade, lms_body

PROBLEMS = {
    "hello_function": "hello_function/grade_hello_function.py",
    "square": "square/grade_square.py",
    "hello": "hello/grade_hello.py",
    "queue_class": "queue_class/grade_queue.py",
    "dice": "dice/grade_dice.py",
    "average": "average/grade_average.py",
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
async def test_staff_answer_gets_full_score(engine: GradingEngine, problem: str) -> None:
    answer = (Path(EXAMPLES) / problem / "answer.py").read_text()
    result = await grade(engine, PROBLEMS[problem], answer)
    assert result.errors == []
    assert (result.correct, result.score) == (True, 1.0)
    assert result.tests and all(row[2] for row in result.tests)


async def test_demo_problem_grades_the_demo_submissions(engine: GradingEngine) -> None:
    correct = await grade(engine, PROBLEMS["hello_function"], "def hello(name):\n    return 'Hello, ' + name + '!'\n")
    assert correct.score == 1
    incorrect = await grade(engine, PROBLEMS["hello_function"], "def hello(name):\n    return 'Hi ' + name\n")
    assert incorrect.score == 0 and not incorrect.errors
    broken = await grade(engine, PROBLEMS["hello_function"], "def hello(name)\n    return name\n")
    assert "SyntaxError" in broken.errors[0]


@pytest.mark.parametrize(("code", "outcome"), [
    ("def square(x):\n    return x * x\n", R.Outcome.CORRECT),
    ("def square(x):\n    return x + x\n", R.Outcome.INCORRECT),
    ("def square(x)\n", R.Outcome.ERROR),
])
async def test_the_engine_answers_with_the_reply_and_its_outcome(engine: GradingEngine, code: str,
                                                                 outcome: R.Outcome) -> None:
    submission = Submission(header='{"submission_id": 1}', body=lms_body(PROBLEMS["square"], code), files="")
    graded = await engine.grade_submission(submission)
    assert graded.outcome == outcome
    assert set(graded.reply) == {"correct", "score", "msg"}
    # The daemon no longer reads the outcome back from the HTML; where it still must (custom
    # handlers' replies), reading it back agrees with what the engine knew.
    assert R.outcome_of(graded.reply) == outcome


async def test_wrong_function_gets_partial_score(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["square"], "def square(x):\n    return x + x\n")
    assert result.correct is False
    assert result.score == pytest.approx(0.2)  # only square(0) agrees
    failing = [row for row in result.tests if not row[2]]
    assert ("Test: square(3)", None, False, "9\n", "6\n") in failing
    html = R.render_results(result)
    assert 'class="result-output result-incorrect"' in html and "Correct output:" in html


async def test_printing_problem_compares_printed_text(engine: GradingEngine) -> None:
    good = 'name = globals().get("name", "World")\ngreeting = "Hello, " + name + "!"\nprint(greeting)\n'
    assert (await grade(engine, PROBLEMS["hello"], good)).score == 1
    rude = 'name = globals().get("name", "World")\ngreeting = "Hi " + name\nprint(greeting)\n'
    result = await grade(engine, PROBLEMS["hello"], rude)
    assert result.score == 0
    assert result.tests[0][3:] == ("Hello, World!\n\n", "Hi World\n\n")


async def test_input_checks_stop_before_running_anything(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["hello"], "import os\nos.system('id')\n")
    assert result.errors == ['Your code must make use of the "print" keyword.', "Please do not import os here."]
    assert result.tests == [] and result.score == 0
    assert "    ERROR\n" in R.render_results(result)


async def test_class_problem_with_end_test(engine: GradingEngine) -> None:
    lenient = (
        "class Queue:\n"
        "    def __init__(self):\n        self.items = []\n"
        "    def insert(self, item):\n        self.items.append(item)\n"
        "    def remove(self):\n        return self.items.pop(0) if self.items else None\n"
    )
    result = await grade(engine, PROBLEMS["queue_class"], lenient)
    assert result.score == pytest.approx(2 / 3)
    (row,) = [r for r in result.tests if not r[2]]
    assert row[0] == "Test: remove from empty"
    assert row[4] == "*** Error: remove() on an empty queue should raise ValueError\n"


async def test_class_problem_reports_missing_method(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["queue_class"], "class Queue:\n    def insert(self, x):\n        pass\n")
    assert result.errors == ["The class named 'Queue' should define a method named remove."]


async def test_random_problem_needs_the_same_random_calls(engine: GradingEngine) -> None:
    same = "import random\n\ndef pick_winner(players):\n    return random.choice(players)\n"
    assert (await grade(engine, PROBLEMS["dice"], same)).score == 1
    # Correct-looking, the same random calls, but a different mapping to players: the list sizes are
    # all even, so the mirrored index never equals the staff run's (a sorted(players)[0] answer
    # matched it by chance in one run of 64).
    other = "import random\n\ndef pick_winner(players):\n    return random.choice(players[::-1])\n"
    assert (await grade(engine, PROBLEMS["dice"], other)).score < 1


async def test_custom_compare_runs_and_its_end_test_message_is_shown(engine: GradingEngine) -> None:
    close = ("def average(numbers):\n    t = 0\n    for n in numbers:\n        t += n\n"
             "    return t / len(numbers) + 1e-9\n")
    assert (await grade(engine, PROBLEMS["average"], close)).score == 1
    text = "def average(numbers):\n    for n in numbers:\n        pass\n    return 'many'\n"
    result = await grade(engine, PROBLEMS["average"], text)
    assert result.score == 0
    assert result.errors == []
    assert all(row[4].endswith("\n*** ERROR: your function should return a number ***") for row in result.tests)


async def test_prohibited_keyword_in_average(engine: GradingEngine) -> None:
    code = "def average(n):\n    for x in n: pass\n    return sum(n)/len(n)\n"
    result = await grade(engine, PROBLEMS["average"], code)
    assert result.errors == ["Please compute the total with a loop, not sum()."]


async def test_hide_output_keeps_score_but_hides_rows(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["square"], "def square(x):\n    return x + x\n", hide_output=True)
    assert result.score == pytest.approx(0.2) and result.tests == []


async def test_skip_grader_gives_full_score_without_running(engine: GradingEngine) -> None:
    result = await grade(engine, "does/not/exist.py", "garbage(", skip_grader=True)
    assert (result.correct, result.score, result.errors) == (True, 1, [])


async def test_student_exception_is_shown_with_only_student_frames(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["square"], "def square(x):\n    return x * x\n\nraise ValueError('oops')\n")
    (error,) = result.errors
    assert error.startswith("Traceback (most recent call last):")
    assert 'File "submission.py", line 4, in <module>' in error
    assert "ValueError: oops" in error
    assert "harness" not in error and "xqueue_grader" not in error


async def test_syntax_error_is_reported(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["square"], "def square(x)\n    return x\n")
    assert len(result.errors) == 1 and "SyntaxError" in result.errors[0]


async def test_exception_inside_a_test_is_that_tests_output(engine: GradingEngine) -> None:
    code = "def square(x):\n    if x < 0:\n        raise RuntimeError('negative')\n    return x * x\n"
    result = await grade(engine, PROBLEMS["square"], code)
    assert result.score == pytest.approx(0.8)
    (row,) = [r for r in result.tests if not r[2]]
    assert "RuntimeError: negative" in row[4] and 'File "submission.py", line 3, in square' in row[4]


@pytest.mark.parametrize(("grader", "message"), [
    ("../outside/grade.py", R.PAYLOAD_PROBLEM),
    ("/etc/passwd.py", R.PAYLOAD_PROBLEM),
    (None, R.PAYLOAD_PROBLEM),
    ("square/missing.py", R.STAFF_PROBLEM),
])
async def test_bad_grader_paths_answer_with_a_message(engine: GradingEngine, grader: str | None, message: str) -> None:
    result = await grade(engine, grader, "x = 1")
    assert result.errors == [message]


async def test_unparseable_body_and_payload(engine: GradingEngine) -> None:
    assert (await engine.grade_body("not json")).errors == [R.PAYLOAD_PROBLEM]
    bad_payload = '{"grader_payload": "{oops", "student_response": ""}'
    assert (await engine.grade_body(bad_payload)).errors == [R.PAYLOAD_PROBLEM]


async def test_submission_size_limit(engine: GradingEngine) -> None:
    result = await grade(engine, PROBLEMS["square"], "#" * (1024 * 1024 + 1))
    assert result.errors == ["Your submission is too large to be graded (limit: 1024 KiB)."]


def write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU gettext catalogue (the .mo format): header, two string tables, no hash table."""
    import struct

    keys = sorted(messages)
    ids = b"".join(k.encode() + b"\0" for k in keys)
    strs = b"".join(messages[k].encode() + b"\0" for k in keys)
    count = len(keys)
    start = 7 * 4 + 16 * count
    offsets_ids, offsets_strs = [], []
    position = 0
    for key in keys:
        offsets_ids.append((len(key.encode()), start + position))
        position += len(key.encode()) + 1
    position = 0
    for key in keys:
        offsets_strs.append((len(messages[key].encode()), start + len(ids) + position))
        position += len(messages[key].encode()) + 1
    header = struct.pack("<7I", 0x950412DE, 0, count, 7 * 4, 7 * 4 + 8 * count, 0, 0)
    tables = b"".join(struct.pack("<2I", *o) for o in offsets_ids + offsets_strs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tables + ids + strs)


async def test_lang_selects_the_course_catalogue(sandbox_pool: Any, tmp_path: Path) -> None:
    root = tmp_path / "course"
    (root / "p").mkdir(parents=True)
    (root / "p" / "grade_p.py").write_text(
        "import gradelib\ngrader = gradelib.Grader()\n"
        "grader.add_input_check(gradelib.required_substring('while'))\n"
        "grader.add_test(gradelib.Test(lambda s: print(_('hello')), _('Test: greeting')))\n")
    (root / "p" / "answer.py").write_text("while False:\n    pass\n")
    write_mo(root / "conf" / "locale" / "fr" / "LC_MESSAGES" / "graders.mo", {
        "": "Content-Type: text/plain; charset=UTF-8\n",
        "Your code should contain '{0}'.": "Votre code doit contenir '{0}'.",
        "Test: greeting": "Test : salutation",
        "hello": "bonjour",
    })
    engine = GradingEngine(sandbox_pool, str(root), TEST_LIMITS)
    refused = await grade(engine, "p/grade_p.py", "x = 1", lang="fr")
    assert refused.errors == ["Votre code doit contenir 'while'."]
    graded = await grade(engine, "p/grade_p.py", "while False:\n    pass\n", lang="fr")
    assert graded.tests == [("Test : salutation", "", True, "bonjour\n", "bonjour\n")]
    english = await grade(engine, "p/grade_p.py", "x = 1")
    assert english.errors == ["Your code should contain 'while'."]
