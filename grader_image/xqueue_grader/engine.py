"""The gradelib grading pipeline (xqueue-watcher's JailedGrader behaviour on our sandbox).

For one submission:

1. parse the LMS body and the ``grader_payload`` (``grader``, ``skip_grader``, ``hide_output``,
   ``lang``); the grader path must stay inside the grader root;
2. **staff run** (sandboxed): imports the course grader, runs its input checks and preprocessors on
   the student's text without executing it, then runs the tests on the preprocessed ``answer.py``
   in a fresh grader: the expected outputs;
3. **student run** (another sandboxed process, same seed): runs the tests on the preprocessed
   submission.  It never receives ``answer.py`` or an expected value;
4. **comparison** here in the daemon (default equality) or, for tests with a custom
   ``compare_results``, in a third sandboxed run that never executes student code;
5. score = passed/total, rendered into the HTML students saw before.

Course files are read here (the daemon trusts course code but never imports it) and handed to the
sandbox as text; the student run's process cannot open the grader root at all.
"""

from __future__ import annotations

import base64
import gettext
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from xqueue_grader import results as R
from xqueue_grader.metrics import Metrics
from xqueue_grader.protocol import (
    ProtocolError,
    Submission,
    check_grader_path,
    flag,
    is_inside,
    module_name_for,
    parse_body,
    parse_grader_payload,
)
from xqueue_grader.sandbox import Limits, RunResult, SandboxPool

log = logging.getLogger("xqueue_grader.engine")

# The original drew the shared seed from this range.
SEED_RANGE = 20001


class ProblemError(Exception):
    """The course files for a problem cannot be used (missing, unreadable, outside the root)."""


@dataclass(frozen=True)
class ProblemFiles:
    grader_path: str
    grader_source: str
    answer: str
    module_name: str


def load_problem(grader_root: str, relative: str) -> ProblemFiles:
    """Read a problem's grader file and ``answer.py``; both must resolve inside the grader root."""
    root = os.path.realpath(grader_root)
    grader_path = os.path.realpath(os.path.join(root, relative))
    answer_path = os.path.realpath(os.path.join(os.path.dirname(grader_path), "answer.py"))
    for path in (grader_path, answer_path):
        if not is_inside(path, root):
            raise ProblemError("a course file resolves outside the grader root")
    try:
        with open(grader_path, encoding="utf-8") as fh:
            source = fh.read()
        with open(answer_path, encoding="utf-8") as fh:
            answer = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemError(f"cannot read course file: {type(exc).__name__}") from None
    return ProblemFiles(grader_path, source, answer, module_name_for(relative))


class Translations:
    """The course's gettext catalogue per language (``conf/locale/<lang>/LC_MESSAGES/graders.mo``)."""

    def __init__(self, grader_root: str) -> None:
        self.localedir = os.path.join(grader_root, "conf", "locale")
        self._cache: dict[str, tuple[float, gettext.NullTranslations, str | None]] = {}

    def get(self, lang: Any) -> tuple[gettext.NullTranslations, str | None]:
        """(translator for daemon-side messages, base64 catalogue for the sandbox)."""
        if not isinstance(lang, str) or not lang or "/" in lang or lang.startswith("."):
            lang = "en"
        path = gettext.find("graders", self.localedir, [lang])
        if not path:
            return gettext.NullTranslations(), None
        try:
            mtime = os.stat(path).st_mtime
            cached = self._cache.get(lang)
            if cached and cached[0] == mtime:
                return cached[1], cached[2]
            with open(path, "rb") as fh:
                data = fh.read()
            translator: gettext.NullTranslations = gettext.GNUTranslations(_BytesReader(data))
        except (OSError, ValueError):
            return gettext.NullTranslations(), None
        encoded = base64.b64encode(data).decode("ascii")
        self._cache[lang] = (mtime, translator, encoded)
        return translator, encoded


class _BytesReader:
    """Minimal file object for GNUTranslations (it only calls read())."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.name = "graders.mo"

    def read(self) -> bytes:
        return self._data


class GradingEngine:
    """Grades submissions with course graders written for xqueue-watcher."""

    def __init__(
        self,
        pool: SandboxPool,
        grader_root: str,
        limits: Limits | None = None,
        submission_size_limit_kb: int = 1024,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.grader_root = grader_root
        self.limits = limits or Limits()
        self.submission_size_limit = submission_size_limit_kb * 1024
        self.metrics = metrics
        self.translations = Translations(grader_root)

    # xqueue-watcher handler interface: handler(content) -> reply dict
    async def __call__(self, submission: Submission) -> dict[str, Any]:
        reply, _outcome = await self.grade_submission(submission)
        return reply

    async def grade_submission(self, submission: Submission) -> tuple[dict[str, Any], str]:
        started = time.monotonic()
        result = await self.grade_body(submission.body, submission.submission_id)
        if self.metrics:
            self.metrics.grading_seconds.observe(time.monotonic() - started)
        outcome = "error" if result.errors else ("correct" if result.correct else "incorrect")
        return R.make_reply(result), outcome

    async def grade_body(self, body_text: str, submission_id: str | None = None) -> R.GradeResult:
        ctx = {"submission_id": submission_id}
        try:
            body = parse_body(body_text)
            config = parse_grader_payload(body.grader_payload)
        except ProtocolError as exc:
            log.warning("unusable submission body", extra={"fields": {**ctx, "reason": str(exc)}})
            return R.error_result(R.PAYLOAD_PROBLEM)
        translator, catalogue = self.translations.get(config.get("lang"))
        _ = translator.gettext
        if flag(config, "skip_grader"):
            return R.skipped_result()
        if len(body.student_response.encode("utf-8", "replace")) > self.submission_size_limit:
            return R.error_result(_(R.SUBMISSION_TOO_LARGE).format(limit=self.submission_size_limit // 1024))
        try:
            relative = check_grader_path(config.get("grader"))
            problem = load_problem(self.grader_root, relative)
        except (ProtocolError, ProblemError) as exc:
            log.error("grader not usable", extra={"fields": {**ctx, "reason": str(exc)}})
            return R.error_result(_(R.PAYLOAD_PROBLEM) if isinstance(exc, ProtocolError) else _(R.STAFF_PROBLEM))
        ctx["grader"] = relative
        return await self._grade(problem, body.student_response, config, catalogue, _, ctx)

    async def _grade(self, problem: ProblemFiles, response: str, config: dict[str, Any],
                     catalogue: str | None, _: R.Translate, ctx: dict[str, Any]) -> R.GradeResult:
        limits = self.limits
        common = {
            "grader_name": problem.module_name,
            "grader_source": problem.grader_source,
            "seed": secrets.randbelow(SEED_RANGE),
            "translations": catalogue,
            "output_limit": int(limits.output_kb) * 1024,
        }
        staff = await self._run("staff", {**common, "mode": "staff", "answer": problem.answer,
                                          "submission": response}, limits)
        prepare = (staff.results or {}).get("prepare") if staff.results else None
        if isinstance(prepare, dict) and prepare.get("status") == "ok" and prepare.get("input_errors"):
            errors = [str(e) for e in prepare["input_errors"]]
            return R.error_result(*errors)
        if isinstance(prepare, dict) and prepare.get("status") == "error" and staff.status == "ok":
            log.error("input checks or preprocessors failed",
                      extra={"fields": {**ctx, "exception": str(prepare.get("exception"))[-2000:]}})
            return R.error_result(_(R.PREPARE_PROBLEM))
        expected = R.valid_rows((staff.results or {}).get("results")) if staff.status == "ok" else None
        if (staff.status != "ok" or not R.staff_run_ok(staff.results) or expected is None
                or not isinstance(prepare, dict) or not isinstance(prepare.get("processed_submission"), str)):
            log.error("staff solution failed", extra={"fields": {**ctx, **_run_summary(staff)}})
            return R.error_result(_(R.STAFF_PROBLEM))

        student = await self._run("student", {**common, "mode": "student",
                                               "code": prepare["processed_submission"]}, limits)
        limit_values = limits.to_dict()
        if student.status == "killed":
            return R.error_result(R.kill_message(student.kill_reason, limit_values, student.signal, _))
        if student.status in ("sandbox_error", "setup_failed"):
            log.error("sandbox failure on student run",
                      extra={"fields": {**ctx, **_run_summary(student, staff_side=False)}})
            return R.error_result(_(R.CONTAINER_PROBLEM))
        if student.results is None:
            return R.error_result(_(R.RUN_PROBLEM), _(R.COULD_NOT_RUN))
        grader_ran, errors = R.student_run_errors(student.results, _)
        if not grader_ran:
            log.error("grader failed in the student run",
                      extra={"fields": {**ctx, **_run_summary(student, staff_side=False)}})
            return R.error_result(_(R.COULD_NOT_RUN))
        if errors:
            return R.error_result(*errors, *R.limit_hints("\n".join(errors), limit_values, _))
        actual = R.valid_rows(student.results.get("results"))
        if actual is None:
            return R.error_result(_(R.RUN_PROBLEM), _(R.COULD_NOT_RUN))
        pairing = R.pair_rows(expected, actual, _)
        if pairing.error:
            return R.error_result(pairing.error)

        defaults = staff.results.get("default_compare") if staff.results else None
        if isinstance(defaults, list) and len(defaults) == len(pairing.rows) and all(d is True for d in defaults):
            verdicts = R.default_verdicts(pairing.rows)
        else:
            compare = await self._run("compare", {**common, "mode": "compare",
                                                  "pairs": [[r[2], r[3]] for r in pairing.rows]}, limits)
            verdicts_raw = (compare.results or {}).get("verdicts") if compare.status == "ok" else None
            verdicts = _valid_verdicts(verdicts_raw, len(pairing.rows))
            if verdicts is None:
                log.error("custom comparison failed", extra={"fields": {**ctx, **_run_summary(compare)}})
                return R.error_result(_(R.STAFF_PROBLEM))
        return R.finalize(pairing.rows, verdicts, flag(config, "hide_output"), _)

    async def _run(self, kind: str, job: dict[str, Any], limits: Limits) -> RunResult:
        result = await self.pool.run(job, limits)
        if self.metrics:
            self.metrics.sandbox_runs.labels(kind, result.status).inc()
            self.metrics.sandbox_run_seconds.observe(result.total_ms / 1000)
            if result.status == "killed" and result.kill_reason:
                self.metrics.sandbox_kills.labels(result.kill_reason).inc()
            elif _memory_error(result):
                self.metrics.sandbox_kills.labels("memory").inc()
        return result


def _memory_error(result: RunResult) -> bool:
    submission = (result.results or {}).get("submission")
    return isinstance(submission, dict) and "MemoryError" in str(submission.get("exception", ""))


def _valid_verdicts(raw: Any, count: int) -> list[tuple[bool, str]] | None:
    if not isinstance(raw, list) or len(raw) != count:
        return None
    verdicts = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[1], str):
            return None
        verdicts.append((bool(item[0]), item[1]))
    return verdicts


def _run_summary(run: RunResult, staff_side: bool = True) -> dict[str, Any]:
    """What staff need to debug a failed run; goes to logs, never to students.

    Output of a student run is left out: logs must not carry student code or its output.
    """
    summary: dict[str, Any] = {
        "status": run.status,
        "kill_reason": run.kill_reason,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "detail": run.detail,
    }
    if staff_side:
        summary["stderr_tail"] = run.stderr[-1500:]
    results = run.results or {}
    for key in ("grader", "prepare"):
        part = results.get(key)
        if isinstance(part, dict) and part.get("exception"):
            summary[f"{key}_exception"] = str(part["exception"])[-2000:]
    if run.results_error:
        summary["results_error"] = run.results_error
    return summary
