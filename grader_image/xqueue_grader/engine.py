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

import logging
import secrets
import time
from typing import Any

from xqueue_grader import results as R
from xqueue_grader.course import (
    GraderPayload,
    ProblemError,
    ProblemFiles,
    Translations,
    check_grader_path,
    load_problem,
)
from xqueue_grader.jobs import (
    CompareJob,
    GraderCode,
    Job,
    StaffJob,
    StaffReport,
    StudentJob,
    SuiteReport,
    Verdict,
    compare_report_from_json,
    job_mode,
    staff_report_from_json,
    suite_report_from_json,
)
from xqueue_grader.metrics import Metrics
from xqueue_grader.protocol import ProtocolError, Submission, parse_body
from xqueue_grader.sandbox import Limits, RunResult, SandboxPool
from xqueue_grader.sandbox.runs import SANDBOX_FAILURES, KillReason, RunStatus

log = logging.getLogger("xqueue_grader.engine")

# The original drew the shared seed from this range.
SEED_RANGE = 20001


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

    async def grade_submission(self, submission: Submission) -> R.Graded:
        """The daemon's handler interface: the reply to put and its outcome."""
        started = time.monotonic()
        result = await self.grade_body(submission.body, submission.submission_id)
        if self.metrics:
            self.metrics.grading_seconds.observe(time.monotonic() - started)
        return R.Graded(R.make_reply(result), result.outcome)

    async def grade_body(self, body_text: str, submission_id: str | None = None) -> R.GradeResult:
        ctx: dict[str, Any] = {"submission_id": submission_id}
        try:
            body = parse_body(body_text)
            payload = GraderPayload.parse(body.grader_payload)
        except ProtocolError as exc:
            log.warning("unusable submission body", extra={"fields": {**ctx, "reason": str(exc)}})
            return R.error_result(R.PAYLOAD_PROBLEM)
        translator, catalogue = self.translations.get(payload.lang)
        _ = translator.gettext
        if payload.skip_grader:
            return R.skipped_result()
        if len(body.student_response.encode("utf-8", "replace")) > self.submission_size_limit:
            return R.error_result(_(R.SUBMISSION_TOO_LARGE).format(limit=self.submission_size_limit // 1024))
        try:
            relative = check_grader_path(payload.grader)
            problem = load_problem(self.grader_root, relative)
        except (ProtocolError, ProblemError) as exc:
            log.error("grader not usable", extra={"fields": {**ctx, "reason": str(exc)}})
            return R.error_result(_(R.PAYLOAD_PROBLEM) if isinstance(exc, ProtocolError) else _(R.STAFF_PROBLEM))
        ctx["grader"] = relative
        return await self._grade(problem, body.student_response, payload, catalogue, _, ctx)

    async def _grade(self, problem: ProblemFiles, response: str, payload: GraderPayload,
                     catalogue: str | None, _: R.Translate, ctx: dict[str, Any]) -> R.GradeResult:
        limits = self.limits
        grader = GraderCode(name=problem.module_name, source=problem.grader_source,
                            seed=secrets.randbelow(SEED_RANGE), translations=catalogue,
                            output_limit=int(limits.output_kb) * 1024)
        staff_run = await self._run(StaffJob(grader, answer=problem.answer, submission=response), limits)
        staff = staff_report_from_json(staff_run.results)
        prepare = staff.prepare if staff else None
        if prepare is not None and prepare.status == "ok" and prepare.input_errors:
            return R.error_result(*prepare.input_errors)
        if prepare is not None and prepare.status == "error" and staff_run.status == RunStatus.OK:
            log.error("input checks or preprocessors failed",
                      extra={"fields": {**ctx, "exception": str(prepare.exception)[-2000:]}})
            return R.error_result(_(R.PREPARE_PROBLEM))
        if (staff_run.status != RunStatus.OK or staff is None or staff.tests is None or not staff.tests.all_ran
                or prepare is None or prepare.processed_submission is None):
            log.error("staff solution failed", extra={"fields": {**ctx, **_run_summary(staff_run, staff)}})
            return R.error_result(_(R.STAFF_PROBLEM))
        expected = staff.tests.rows or []

        student_run = await self._run(StudentJob(grader, code=prepare.processed_submission), limits)
        limit_values = limits.to_dict()
        if student_run.status == RunStatus.KILLED:
            return R.error_result(R.kill_message(student_run.kill_reason, limit_values, student_run.signal, _))
        if student_run.status in SANDBOX_FAILURES:
            log.error("sandbox failure on student run",
                      extra={"fields": {**ctx, **_run_summary(student_run, staff_side=False)}})
            return R.error_result(_(R.CONTAINER_PROBLEM))
        student = suite_report_from_json(student_run.results)
        if student is None:
            return R.error_result(_(R.RUN_PROBLEM), _(R.COULD_NOT_RUN))
        if student.grader is None or not student.grader.ok or student.submission is None:
            log.error("grader failed in the student run",
                      extra={"fields": {**ctx, **_run_summary(student_run, student, staff_side=False)}})
            return R.error_result(_(R.COULD_NOT_RUN))
        if not student.submission.ok:
            errors = [student.submission.exception or _(R.ERROR_THROWN)]
            return R.error_result(*errors, *R.limit_hints("\n".join(errors), limit_values, _))
        if student.rows is None:
            return R.error_result(_(R.RUN_PROBLEM), _(R.COULD_NOT_RUN))
        pairing = R.pair_rows(expected, student.rows, _)
        if pairing.error:
            return R.error_result(pairing.error)

        defaults = staff.default_compare
        verdicts: list[Verdict] | None
        if defaults is not None and len(defaults) == len(pairing.rows) and all(defaults):
            verdicts = R.default_verdicts(pairing.rows)
        else:
            job = CompareJob(grader, pairs=[(row[2], row[3]) for row in pairing.rows])
            compare_run = await self._run(job, limits)
            compare = compare_report_from_json(compare_run.results) if compare_run.status == RunStatus.OK else None
            verdicts = compare.verdicts if compare is not None and compare.ok else None
            if verdicts is None or len(verdicts) != len(pairing.rows):
                log.error("custom comparison failed", extra={"fields": {**ctx, **_run_summary(compare_run)}})
                return R.error_result(_(R.STAFF_PROBLEM))
        return R.finalize(pairing.rows, verdicts, payload.hide_output, _)

    async def _run(self, job: Job, limits: Limits) -> RunResult:
        result = await self.pool.run(job, limits)
        if self.metrics:
            self.metrics.sandbox_runs.labels(job_mode(job), result.status).inc()
            self.metrics.sandbox_run_seconds.observe(result.total_ms / 1000)
            if result.status == RunStatus.KILLED and result.kill_reason:
                self.metrics.sandbox_kills.labels(result.kill_reason).inc()
            elif _memory_error(result):
                self.metrics.sandbox_kills.labels(KillReason.MEMORY).inc()
        return result


def _memory_error(result: RunResult) -> bool:
    """A run whose module import or tests ended in MemoryError: RLIMIT_AS stopped it."""
    report = suite_report_from_json(result.results)
    submission = report.submission if report else None
    return submission is not None and "MemoryError" in (submission.exception or "")


def _run_summary(run: RunResult, report: StaffReport | SuiteReport | None = None,
                 staff_side: bool = True) -> dict[str, Any]:
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
    tests = report.tests if isinstance(report, StaffReport) else report
    prepare = report.prepare if isinstance(report, StaffReport) else None
    if tests is not None and tests.grader is not None and tests.grader.exception:
        summary["grader_exception"] = tests.grader.exception[-2000:]
    if prepare is not None and prepare.exception:
        summary["prepare_exception"] = prepare.exception[-2000:]
    if run.results_error:
        summary["results_error"] = run.results_error
    return summary

