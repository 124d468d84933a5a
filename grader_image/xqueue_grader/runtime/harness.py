"""The test harness that runs inside a sandboxed child process.

One job, one process, one mode:

* ``staff``   - imports the course grader, runs its input checks and preprocessors on the student's
  text (never executing it), then imports the preprocessed staff answer into a *fresh* grader and
  records every test's output: the expected values.
* ``student`` - imports a fresh grader and the preprocessed submission, records every test's output.
  It receives neither ``answer.py`` nor any expected value, so nothing it can read or forge changes
  the comparison: a forged channel only changes the student's own "actual" outputs.
* ``compare`` - only for tests with a custom ``compare_results``: runs the grader's comparison
  functions on (expected, actual) strings.  It never runs student code.
* ``script``  - runs arbitrary code as ``__main__`` (for custom handlers and the benchmark).

The result is one JSON document written to the channel fd (never to stdout, which student code
owns).  The output shape of ``staff``/``student`` follows the xqueue-watcher run format:
``{"grader": {...}, "submission": {...}, "results": [[short, long, output], ...], "exceptions": n}``.
"""

from __future__ import annotations

import base64
import builtins
import gettext
import io
import json
import linecache
import os
import random
import sys
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from xqueue_grader.jobs import (
    CompareJob,
    CompareReport,
    GraderCode,
    ImportReport,
    ImportStatus,
    JobError,
    Prepared,
    ResultRow,
    ScriptJob,
    StaffJob,
    StaffReport,
    StudentJob,
    SuiteReport,
    Verdict,
    compare_report_to_json,
    job_from_json,
    staff_report_to_json,
    suite_report_to_json,
)
from xqueue_grader.runtime import gradelib

SUBMISSION_MODULE = "submission"
INTERFERED = "Your code interfered with our grader.  Don't use bare 'except' clauses."


class BoundedText(io.TextIOBase):
    """A stdout replacement that keeps at most ``limit`` characters.

    Student code printing gigabytes must not exhaust the child's memory before the comparison
    ever happens; what is beyond the cap is counted and dropped.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._kept = 0
        self._limit = max(0, limit)
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self._limit - self._kept
        if room > 0:
            piece = s[:room]
            self._parts.append(piece)
            self._kept += len(piece)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def getvalue(self) -> str:
        return "".join(self._parts)


@contextmanager
def captured_stdout(limit: int) -> Iterator[BoundedText]:
    saved = sys.stdout
    buffer = BoundedText(limit)
    sys.stdout = buffer
    try:
        yield buffer
    finally:
        sys.stdout = saved


def install_translations(mo_b64: str | None) -> None:
    """Install ``_`` as a builtin, as graders and gradelib messages expect."""
    translations: gettext.NullTranslations
    if mo_b64:
        try:
            translations = gettext.GNUTranslations(io.BytesIO(base64.b64decode(mo_b64)))
        except Exception:
            translations = gettext.NullTranslations()
    else:
        translations = gettext.NullTranslations()
    translations.install()


def seed_randomness(seed: int) -> None:
    # The grader's private generator and the global one (exercises may use ``random``) get the
    # same seeds in the staff run and the student run.
    gradelib.rand = random.Random(seed)
    random.seed(seed + 1)


def load_module(name: str, source: str, filename: str) -> types.ModuleType:
    """Import ``source`` as module ``name`` from memory (nothing is written to disk)."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    code = compile(source, filename, "exec", dont_inherit=True)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _frame_in_file(frame: types.FrameType, filename: str) -> bool:
    stem = os.path.splitext(os.path.basename(frame.f_code.co_filename))[0]
    return stem == os.path.splitext(filename)[0]


def format_exception(main_file: str | None = None) -> str:
    """The current exception; for student code, starting at the first frame of ``main_file``.

    Hiding the harness frames keeps the traceback about the student's code only.
    """
    exc_type, exc_value, tb = sys.exc_info()
    if main_file:
        start = tb
        while start is not None and not _frame_in_file(start.tb_frame, main_file):
            start = start.tb_next
        tb = start
    return "".join(traceback.format_exception(exc_type, exc_value, tb))


def import_captured(
    name: str, source: str, filename: str, output_limit: int, our_code: bool
) -> tuple[types.ModuleType | None, ImportReport]:
    module = None
    exception = None
    with captured_stdout(output_limit) as out:
        try:
            module = load_module(name, source, filename)
        except BaseException:
            exception = format_exception(None if our_code else filename)
    status: ImportStatus = "ok" if exception is None else "error"
    return module, ImportReport(status=status, exception=exception, stdout=out.getvalue())


def _guard_pid(harness_pid: int) -> None:
    # A process forked by student code continues in the harness when its student function
    # returns; only the original process may report, so copies leave quietly.
    if os.getpid() != harness_pid:
        os._exit(0)


def _import_grader(grader: GraderCode) -> tuple[types.ModuleType | None, ImportReport]:
    """A fresh import of the course grader module."""
    return import_captured(grader.name, grader.source, grader.name + ".py", grader.output_limit, True)


def run_tests(grader_code: GraderCode, code: str, harness_pid: int) -> SuiteReport:
    """Import a fresh grader and ``code`` as the submission module; run every test."""
    limit = grader_code.output_limit
    sub_file = SUBMISSION_MODULE + ".py"
    seed_randomness(grader_code.seed)
    grader_mod, grader_report = _import_grader(grader_code)
    grader = None
    exceptions = 0
    if grader_mod is not None:
        try:
            grader = grader_mod.grader
        except BaseException:
            grader_report = replace(grader_report, status="error", exception=format_exception())
            exceptions += 1
    else:
        exceptions += 1
    if not grader_report.ok or grader is None:
        return SuiteReport(grader=grader_report, submission=ImportReport(), rows=[], exceptions=exceptions)

    rows: list[ResultRow] = []
    submission, submission_report = import_captured(SUBMISSION_MODULE, code, sub_file, limit, False)
    _guard_pid(harness_pid)
    if submission is not None and submission_report.ok:
        try:
            for test in grader.tests():
                exception_output = ""
                with captured_stdout(limit) as test_stdout:
                    try:
                        test(submission)
                    except gradelib.EndTest:
                        grader.caught_end_test()
                    except BaseException:
                        # Could be the grader or the student: show only the student's frames.
                        exception_output = format_exception(sub_file)
                        exceptions += 1
                _guard_pid(harness_pid)
                test_output = test_stdout.getvalue()
                if test_output and not test_output.endswith("\n"):
                    test_output += "\n"
                test_output += exception_output
                rows.append(ResultRow(_text(test.short_description), _opt_text(test.detailed_description), test_output))
        except BaseException:
            _guard_pid(harness_pid)
            grader_report = replace(grader_report, status="error", exception=format_exception())
            exceptions += 1
    else:
        exceptions += 1

    try:
        uncaught = grader.uncaught_end_tests()
    except BaseException:
        uncaught = 0
    if uncaught:
        submission_report = replace(submission_report, status="caught", exception=builtins_gettext(INTERFERED))
    return SuiteReport(grader=grader_report, submission=submission_report, rows=rows, exceptions=exceptions)


def builtins_gettext(message: str) -> str:
    translate = getattr(builtins, "_", None)
    if callable(translate):
        try:
            value = translate(message)
            if isinstance(value, str):
                return value
        except Exception:
            pass
    return message


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _opt_text(value: object) -> str | None:
    if value is None:
        return None
    return _text(value)


def run_staff(job: StaffJob, harness_pid: int) -> StaffReport:
    limit = job.grader.output_limit
    seed_randomness(job.grader.seed)
    grader_mod, grader_report = _import_grader(job.grader)
    if grader_mod is None or not hasattr(grader_mod, "grader"):
        # The course grader itself is broken: a staff problem, not the submission's.
        exception = grader_report.exception or "grader module defines no 'grader'"
        return StaffReport(prepare=Prepared(status="grader_error", exception=exception),
                           tests=SuiteReport(grader=grader_report, submission=None, rows=None))
    grader = grader_mod.grader
    try:
        with captured_stdout(limit):
            errors = grader.input_errors(job.submission)
            errors = [_text(e) for e in errors if e]
            if errors:
                return StaffReport(prepare=Prepared(status="ok", input_errors=errors))
            processed_answer = grader.preprocess(job.answer)
            processed_submission = grader.preprocess(job.submission)
        if not isinstance(processed_answer, str) or not isinstance(processed_submission, str):
            raise TypeError("a preprocessor returned something other than a string")
    except BaseException:
        return StaffReport(prepare=Prepared(status="error", exception=format_exception()))
    # The staff run gets a fresh grader, as in the original where input checks ran in another
    # process than the staff run: no state from preprocessing leaks into the tests.
    tests = run_tests(job.grader, processed_answer, harness_pid)
    grader_mod_now = sys.modules.get(job.grader.name)
    graded_tests: list[Any] = getattr(getattr(grader_mod_now, "grader", None), "tests", lambda: [])()
    return StaffReport(prepare=Prepared(status="ok", processed_submission=processed_submission), tests=tests,
                       default_compare=[gradelib.has_default_comparison(t) for t in graded_tests])


def run_compare(job: CompareJob) -> CompareReport:
    seed_randomness(job.grader.seed)
    grader_mod, grader_report = _import_grader(job.grader)
    if grader_mod is None or not hasattr(grader_mod, "grader"):
        return CompareReport(ok=False, exception=grader_report.exception or "grader module defines no 'grader'")
    verdicts: list[Verdict] = []
    try:
        tests = grader_mod.grader.tests()
        for test, (expected, actual) in zip(tests, job.pairs, strict=False):
            suffix = ""
            with captured_stdout(job.grader.output_limit):
                try:
                    correct = bool(test.compare_results(expected, actual))
                except gradelib.EndTest as exc:
                    suffix = "\n*** {}: {} ***".format(builtins_gettext("ERROR"), exc)
                    correct = False
            verdicts.append(Verdict(correct, suffix))
    except BaseException:
        return CompareReport(ok=False, exception=format_exception())
    return CompareReport(ok=True, verdicts=verdicts)


def run_script(job: ScriptJob) -> int:
    """Run ``job.code`` as ``__main__``; returns the exit status."""
    for name, content in job.files.items():
        with open(name, "wb") as fh:
            fh.write(content)
    source = job.code
    filename = job.filename
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins}
    try:
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        sys.stderr.write(format_exception(filename))
        return 1
    return 0


def write_channel(fd: int, document: dict[str, Any]) -> None:
    data = json.dumps(document, ensure_ascii=False).encode("utf-8", "replace")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.close(fd)


def main(document: dict[str, Any], channel_fd: int) -> int:
    """Entry point inside the sandboxed child; returns the exit status."""
    harness_pid = os.getpid()
    try:
        job = job_from_json(document)
    except JobError as exc:
        # Our bug, not the submission's: the run ends "failed" with the reason on stderr.
        sys.stderr.write(f"bad job: {exc}\n")
        _flush_std()
        write_channel(channel_fd, {"error": str(exc)})
        return 1
    install_translations(job.translations if isinstance(job, ScriptJob) else job.grader.translations)
    if isinstance(job, ScriptJob):
        status = run_script(job)
        _flush_std()
        return status
    report: dict[str, Any]
    if isinstance(job, StaffJob):
        report = staff_report_to_json(run_staff(job, harness_pid))
    elif isinstance(job, StudentJob):
        report = suite_report_to_json(run_tests(job.grader, job.code, harness_pid))
    else:
        report = compare_report_to_json(run_compare(job))
    _guard_pid(harness_pid)
    _flush_std()
    write_channel(channel_fd, report)
    return 0


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
