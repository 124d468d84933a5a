"""Turning run outputs into a grade and the grade into the HTML students see (pure functions).

The HTML layout, CSS classes and messages are the ones xqueue-watcher produced (xqueue-protocol.md
section 7.3), so course pages and their stylesheets keep working.  Messages go through ``_`` (the
course's gettext catalogue for the payload's ``lang``) like the originals did.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from xqueue_grader.jobs import ResultRow, Verdict
from xqueue_grader.sandbox.runs import KillReason

Translate = Callable[[str], str]

# Messages students saw from xqueue-watcher (exact strings).
STAFF_PROBLEM = "There was a problem running the staff solution (Staff debug: L364)"
RUN_PROBLEM = "There was a problem running your solution (Staff debug: L379)."
COULD_NOT_RUN = "We couldn't run your solution (Staff debug: L397)."
ERROR_THROWN = "There was an error thrown while running your solution."
DIFFERENT_COUNTS = (
    "Something went wrong: different numbers of tests ran for your code and for our reference code."
)
TESTS_MISMATCH = "Something went wrong: tests don't match up."
NO_TESTS = (
    "There was a problem while running your code (Staff debug: L450). "
    "Please contact the course staff for assistance."
)
CONTAINER_PROBLEM = (
    "There was a problem running your code (Staff debug). Please contact the course staff for assistance."
)
# Ours: the original had no specific text for these cases (a student saw L379 or nothing at all).
PREPARE_PROBLEM = (
    "There was a problem checking your submission (Staff debug: input checks). "
    "Please contact the course staff for assistance."
)
PAYLOAD_PROBLEM = (
    "This problem's grader is not configured correctly (Staff debug: grader_payload). "
    "Please contact the course staff for assistance."
)
SUBMISSION_TOO_LARGE = "Your submission is too large to be graded (limit: {limit} KiB)."
KILL_MESSAGES: dict[KillReason, str] = {
    KillReason.WALL: "Your code took too long to run and was stopped after {wall} seconds.",
    KillReason.CPU: "Your code used too much processor time and was stopped after {cpu} seconds of CPU time.",
    KillReason.MEMORY: "Your code used more memory than allowed ({memory} MiB) and was stopped.",
    KillReason.OUTPUT: "Your code printed far too much output and was stopped.",
    KillReason.DISK: "Your code wrote too much data to disk (more than {disk} KiB) and was stopped.",
    KillReason.FILE_SIZE: "Your code tried to write a file larger than allowed ({file_size} KiB) and was stopped.",
    KillReason.RESULTS_TOO_LARGE: "Your code produced too much output to be graded and was stopped.",
    KillReason.SIGNAL: "Your code crashed (it was killed by signal {signal}).",
}
# Hints added when the student's traceback shows that a limit was hit.
LIMIT_HINTS = (
    ("MemoryError", "Your code used more memory than allowed ({memory} MiB)."),
    ("[Errno 11] Resource temporarily unavailable",
     "Your code tried to start too many processes or threads (limit: {processes})."),
    ("[Errno 24] Too many open files", "Your code opened too many files (limit: {open_files})."),
    ("[Errno 27] File too large", "Your code tried to write a file larger than allowed ({file_size} KiB)."),
)
TRUNCATE_AT = 5000
TRUNCATED = "...OUTPUT TRUNCATED"

RESULTS_TEMPLATE = """
<div class="test">
<header>Test results</header>
  <section>
    <div class="shortform">
    {status}
    </div>
    <div class="longform">
      {errors}
      {results}
    </div>
  </section>
</div>
"""

CORRECT_TEMPLATE = """
  <div class="result-output result-correct">
    <h4>{short}</h4>
    <pre>{long}</pre>
    <dl>
    <dt>Output:</dt>
    <dd class="result-actual-output">
       <pre>{actual}</pre>
       </dd>
    </dl>
  </div>
"""

INCORRECT_TEMPLATE = """
  <div class="result-output result-incorrect">
    <h4>{short}</h4>
    <pre>{long}</pre>
    <dl>
    <dt>Your output:</dt>
    <dd class="result-actual-output"><pre>{actual}</pre></dd>
    <dt>Correct output:</dt>
    <dd><pre>{expected}</pre></dd>
    </dl>
  </div>
"""


def identity(message: str) -> str:
    return message


class Outcome(StrEnum):
    """What became of a submission (the ``outcome`` label of ``xqgrader_submissions_total``)."""

    CORRECT = "correct"
    INCORRECT = "incorrect"
    ERROR = "error"                  # graded, with an error message instead of test rows
    HANDLER_ERROR = "handler_error"  # a handler raised: no reply
    UNREADABLE = "unreadable"        # the pulled submission could not be parsed: no reply


@dataclass
class GradeResult:
    """The grade() contract: correct, score in 0..1, per-test rows and error messages."""

    correct: bool = False
    score: float = 0.0
    tests: list[tuple[str, str | None, bool, str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> Outcome:
        if self.errors:
            return Outcome.ERROR
        return Outcome.CORRECT if self.correct else Outcome.INCORRECT


def truncate(output: str) -> str:
    if len(output) > TRUNCATE_AT:
        return output[:TRUNCATE_AT] + TRUNCATED
    return output


def format_errors(errors: Sequence[str]) -> str:
    if not errors:
        return ""
    items = "\n".join(f"<li><pre>{html.escape(e)}</pre></li>\n" for e in errors)
    return f'<div class="result-errors"><ul>\n{items}</ul>\n</div>'


def render_test(row: tuple[str, str | None, bool, str, str]) -> str:
    short, long, correct, expected, actual = row
    fields = {
        "short": html.escape(short),
        "long": f"<p>{html.escape(long)}</p>" if long else "",
        "expected": html.escape(expected),
        "actual": html.escape(actual),
    }
    template = CORRECT_TEMPLATE if correct else INCORRECT_TEMPLATE
    return template.format(**fields)


def render_results(result: GradeResult) -> str:
    """The ``msg`` HTML; status ERROR if any error, else CORRECT or INCORRECT."""
    errors = format_errors(result.errors)
    if errors:
        status = "ERROR"
    elif result.correct:
        status = "CORRECT"
    else:
        status = "INCORRECT"
    rows = "".join(render_test(row) for row in result.tests)
    return RESULTS_TEMPLATE.format(status=status, errors=errors, results=rows)


def make_reply(result: GradeResult) -> dict[str, Any]:
    """The grader reply body the LMS expects: all three keys, always."""
    return {"correct": result.correct, "score": result.score, "msg": render_results(result)}


@dataclass(frozen=True)
class Graded:
    """A handler's answer: the reply to put and what became of the submission."""

    reply: dict[str, Any]
    outcome: Outcome


def outcome_of(reply: dict[str, Any]) -> Outcome:
    """The outcome of a reply someone else built (a custom handler): read back from the reply.

    Our own engine knows its outcome (``GradeResult.outcome``); a handler's reply only says
    ``correct``, and an error shows as ``make_reply``'s error list in its HTML.
    """
    if reply.get("correct"):
        return Outcome.CORRECT
    if 'class="result-errors"' in str(reply.get("msg", "")):
        return Outcome.ERROR
    return Outcome.INCORRECT


def error_result(*messages: str) -> GradeResult:
    return GradeResult(correct=False, score=0, errors=[m for m in messages if m])


def skipped_result() -> GradeResult:
    return GradeResult(correct=True, score=1)


def _limit_values(limits: dict[str, Any], signal: int | None = None) -> dict[str, Any]:
    return {
        "wall": _fmt(limits.get("wall_seconds")),
        "cpu": _fmt(limits.get("cpu_seconds")),
        "memory": limits.get("memory_mb"),
        "output": limits.get("output_kb"),
        "disk": limits.get("disk_kb"),
        "file_size": limits.get("file_size_kb"),
        "processes": limits.get("processes"),
        "open_files": limits.get("open_files"),
        "signal": signal if signal is not None else "?",
    }


def kill_message(reason: KillReason | None, limits: dict[str, Any], signal: int | None, _: Translate) -> str:
    template = KILL_MESSAGES.get(reason or KillReason.SIGNAL, KILL_MESSAGES[KillReason.SIGNAL])
    return _(template).format(**_limit_values(limits, signal))


def limit_hints(text: str, limits: dict[str, Any], _: Translate) -> list[str]:
    """Plain-language hints for limit errors visible in a traceback."""
    values = _limit_values(limits)
    return [_(template).format(**values) for marker, template in LIMIT_HINTS if marker in text]


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# -- the comparison, exactly as xqueue-watcher's JailedGrader decided ---------------------------

@dataclass
class Pairing:
    """Expected/actual rows lined up for comparison, or the error that stops grading."""

    rows: list[tuple[str, str | None, str, str]] = field(default_factory=list)  # short, long, exp, act
    error: str | None = None


def pair_rows(expected: Sequence[ResultRow | tuple[str, str | None, str]],
              actual: Sequence[ResultRow | tuple[str, str | None, str]], _: Translate) -> Pairing:
    if len(expected) != len(actual):
        return Pairing(error=_(DIFFERENT_COUNTS))
    rows = []
    for (exp_short, exp_long, exp_out), (act_short, _act_long, act_out) in zip(expected, actual, strict=True):
        if exp_short != act_short:
            return Pairing(error=_(TESTS_MISMATCH))
        # Compare what is shown: a truncated output is compared truncated.
        rows.append((exp_short, exp_long, exp_out, truncate(act_out)))
    return Pairing(rows=rows)


def default_verdicts(rows: list[tuple[str, str | None, str, str]]) -> list[Verdict]:
    return [Verdict(expected == actual) for _short, _long, expected, actual in rows]


def finalize(rows: list[tuple[str, str | None, str, str]], verdicts: Sequence[Verdict | tuple[bool, str]],
             hide_output: bool, _: Translate) -> GradeResult:
    """Score = passed/total; correct = all passed and at least one test."""
    result = GradeResult()
    corrects = []
    for (short, long, expected, actual), (correct, suffix) in zip(rows, verdicts, strict=False):
        shown = actual + suffix if suffix else actual
        corrects.append(bool(correct))
        if not hide_output:
            result.tests.append((short, long, bool(correct), expected, shown))
    total = len(corrects)
    result.correct = total > 0 and all(corrects)
    result.score = float(sum(corrects)) / total if total else 0
    if total == 0:
        result.errors = [_(NO_TESTS)]
    return result
