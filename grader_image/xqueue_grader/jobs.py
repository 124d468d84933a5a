"""The shapes that cross into the sandbox and back: jobs for the harness, and the documents the
harness writes to its results channel (pure: dataclasses plus explicit JSON functions).

A job travels daemon -> zygote -> supervisor -> harness as JSON (``job_to_json`` /
``job_from_json``; one flat object with a ``mode``).  The harness answers with one JSON document on
the results channel (``*_report_to_json``); the daemon reads it back with the ``*_report_from_json``
functions.  Student code runs in the same process as the harness and can write that channel, so
those readers treat the document as untrusted: a malformed part becomes ``None`` (or is left out),
never an exception, and the engine decides what a missing part means.

Modes (see ``runtime/harness.py``): ``staff`` (input checks, preprocessors, the staff answer's
test outputs), ``student`` (the submission's test outputs), ``compare`` (a grader's custom
``compare_results`` on expected/actual pairs), ``script`` (any code as ``__main__``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

DEFAULT_OUTPUT_LIMIT = 65536


class JobError(ValueError):
    """A job document without the documented shape."""


# -- jobs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraderCode:
    """The course grader as every gradelib mode receives it (source text, never a path)."""

    name: str
    source: str
    seed: int
    translations: str | None = None  # base64 gettext catalogue for ``_``
    output_limit: int = DEFAULT_OUTPUT_LIMIT


@dataclass(frozen=True)
class StaffJob:
    grader: GraderCode
    answer: str
    submission: str


@dataclass(frozen=True)
class StudentJob:
    grader: GraderCode
    code: str  # the preprocessed submission


@dataclass(frozen=True)
class CompareJob:
    grader: GraderCode
    pairs: list[tuple[str, str]]  # (expected, actual) per test


@dataclass(frozen=True)
class ScriptJob:
    code: str
    files: dict[str, bytes] = field(default_factory=dict)  # written into the run directory first
    filename: str = "main.py"
    translations: str | None = None

    def __post_init__(self) -> None:
        for name in self.files:
            if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
                raise JobError(f"file name {name!r} must be a plain name")


Job = StaffJob | StudentJob | CompareJob | ScriptJob
Mode = Literal["staff", "student", "compare", "script"]
ImportStatus = Literal["notrun", "ok", "error", "caught"]
PrepareStatus = Literal["ok", "error", "grader_error"]
IMPORT_STATUSES: tuple[ImportStatus, ...] = ("notrun", "ok", "error", "caught")
PREPARE_STATUSES: tuple[PrepareStatus, ...] = ("ok", "error", "grader_error")


def job_mode(job: Job) -> Mode:
    if isinstance(job, StaffJob):
        return "staff"
    if isinstance(job, StudentJob):
        return "student"
    if isinstance(job, CompareJob):
        return "compare"
    return "script"


def job_to_json(job: Job) -> dict[str, Any]:
    document: dict[str, Any] = {"mode": job_mode(job)}
    if isinstance(job, ScriptJob):
        document.update(code=job.code, filename=job.filename, translations=job.translations,
                        files={name: base64.b64encode(data).decode("ascii") for name, data in job.files.items()})
        return document
    grader = job.grader
    document.update(grader_name=grader.name, grader_source=grader.source, seed=grader.seed,
                    translations=grader.translations, output_limit=grader.output_limit)
    if isinstance(job, StaffJob):
        document.update(answer=job.answer, submission=job.submission)
    elif isinstance(job, StudentJob):
        document.update(code=job.code)
    else:
        document.update(pairs=[[expected, actual] for expected, actual in job.pairs])
    return document


def _str(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise JobError(f"job field {key!r} must be text")
    return value


def _opt_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise JobError(f"job field {key!r} must be text or null")
    return value


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"job field {key!r} must be an integer")
    return value


def job_from_json(data: Any) -> Job:
    """The job a JSON document describes; JobError when it does not have the documented shape."""
    if not isinstance(data, dict):
        raise JobError("a job must be a JSON object")
    mode = data.get("mode")
    if mode == "script":
        files = data.get("files") or {}
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise JobError("job field 'files' must map names to base64 text")
        try:
            decoded = {name: base64.b64decode(text, validate=True) for name, text in files.items()}
        except (binascii.Error, ValueError):
            raise JobError("job field 'files' holds invalid base64") from None
        return ScriptJob(code=_str(data, "code"), files=decoded, filename=_str(data, "filename", "main.py"),
                         translations=_opt_str(data, "translations"))
    if mode not in ("staff", "student", "compare"):
        raise JobError(f"unknown mode {mode!r}")
    grader = GraderCode(name=_str(data, "grader_name"), source=_str(data, "grader_source"),
                        seed=_int(data, "seed"), translations=_opt_str(data, "translations"),
                        output_limit=_int(data, "output_limit", DEFAULT_OUTPUT_LIMIT))
    if mode == "staff":
        return StaffJob(grader=grader, answer=_str(data, "answer"), submission=_str(data, "submission"))
    if mode == "student":
        return StudentJob(grader=grader, code=_str(data, "code"))
    pairs = data.get("pairs")
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs):
        raise JobError("job field 'pairs' must be a list of [expected, actual] texts")
    return CompareJob(grader=grader, pairs=[(p[0], p[1]) for p in pairs])


# -- what the harness reports --------------------------------------------------------------------

@dataclass(frozen=True)
class ImportReport:
    """Importing the grader or the submission module (and, for the submission, running tests).

    ``status``: ``notrun``, ``ok``, ``error`` (raised; ``exception`` holds the traceback) or
    ``caught`` (the submission swallowed gradelib's EndTest; ``exception`` holds the message).
    """

    status: ImportStatus = "notrun"
    exception: str | None = None
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ResultRow(NamedTuple):
    """One test's row ``[short, long, output]`` (a tuple, so rows compare and unpack as such)."""

    short: str
    long: str | None
    output: str


@dataclass(frozen=True)
class SuiteReport:
    """One run of every test (the staff answer's or the submission's)."""

    grader: ImportReport | None  # None: missing or malformed in the document
    submission: ImportReport | None
    rows: list[ResultRow] | None   # None: missing or malformed (e.g. forged)
    exceptions: int = 0

    @property
    def all_ran(self) -> bool:
        """The grader and the module imported, every test ran without an exception."""
        return (self.exceptions == 0 and self.grader is not None and self.grader.ok
                and self.submission is not None and self.submission.ok and self.rows is not None)


@dataclass(frozen=True)
class Prepared:
    """The staff run's input checks and preprocessing.

    ``status``: ``ok`` (then either ``input_errors`` or ``processed_submission``), ``error`` (an
    input check or preprocessor raised) or ``grader_error`` (the grader module is broken).
    """

    status: PrepareStatus
    input_errors: list[str] = field(default_factory=list)
    processed_submission: str | None = None
    exception: str | None = None


@dataclass(frozen=True)
class StaffReport:
    prepare: Prepared | None
    tests: SuiteReport | None = None
    default_compare: list[bool] | None = None  # per test: gradelib's own comparison?


class Verdict(NamedTuple):
    correct: bool
    suffix: str = ""  # appended to the shown output (an EndTest message from compare_results)


@dataclass(frozen=True)
class CompareReport:
    ok: bool
    verdicts: list[Verdict] | None = None
    exception: str | None = None


def import_report_to_json(report: ImportReport) -> dict[str, Any]:
    document: dict[str, Any] = {"status": report.status, "stdout": report.stdout}
    if report.exception is not None:
        document["exception"] = report.exception
    return document


def suite_report_to_json(report: SuiteReport) -> dict[str, Any]:
    return {
        "grader": import_report_to_json(report.grader or ImportReport()),
        "submission": import_report_to_json(report.submission or ImportReport()),
        "results": [[row.short, row.long, row.output] for row in report.rows or []],
        "exceptions": report.exceptions,
    }


def staff_report_to_json(report: StaffReport) -> dict[str, Any]:
    document = suite_report_to_json(report.tests) if report.tests is not None else {}
    if report.prepare is not None:
        prepare: dict[str, Any] = {"status": report.prepare.status}
        if report.prepare.status == "ok":
            prepare["input_errors"] = list(report.prepare.input_errors)
        if report.prepare.processed_submission is not None:
            prepare["processed_submission"] = report.prepare.processed_submission
        if report.prepare.exception is not None:
            prepare["exception"] = report.prepare.exception
        document["prepare"] = prepare
    if report.default_compare is not None:
        document["default_compare"] = list(report.default_compare)
    return document


def compare_report_to_json(report: CompareReport) -> dict[str, Any]:
    if not report.ok:
        return {"status": "error", "exception": report.exception}
    return {"status": "ok", "verdicts": [[v.correct, v.suffix] for v in report.verdicts or []]}


# Readers of untrusted documents: never raise, return None for what does not fit.

def _shown(value: Any) -> str | None:
    """An exception text as shown to people: whatever was there, as text; nothing when empty."""
    if not value:
        return None
    return value if isinstance(value, str) else str(value)


def _import_status(value: Any) -> ImportStatus:
    for status in IMPORT_STATUSES:
        if value == status:
            return status
    return "error"  # anything else: the import did not end well


def import_report_from_json(data: Any) -> ImportReport | None:
    if not isinstance(data, dict):
        return None
    stdout = data.get("stdout")
    return ImportReport(status=_import_status(data.get("status")),
                        exception=_shown(data.get("exception")),
                        stdout=stdout if isinstance(stdout, str) else "")


def valid_rows(data: Any) -> list[ResultRow] | None:
    """Rows ``[short, long, output]``, or None when any row is malformed."""
    if not isinstance(data, list):
        return None
    rows = []
    for row in data:
        if not isinstance(row, list | tuple) or len(row) != 3:
            return None
        short, long, output = row
        if not isinstance(short, str) or not isinstance(output, str) or not (long is None or isinstance(long, str)):
            return None
        rows.append(ResultRow(short, long, output))
    return rows


def suite_report_from_json(data: Any) -> SuiteReport | None:
    if not isinstance(data, dict):
        return None
    exceptions = data.get("exceptions")
    if isinstance(exceptions, bool) or not isinstance(exceptions, int):
        # Anything but a count: something went wrong, how often is unknown.
        exceptions = 1 if exceptions else 0
    return SuiteReport(grader=import_report_from_json(data.get("grader")),
                       submission=import_report_from_json(data.get("submission")),
                       rows=valid_rows(data.get("results")),
                       exceptions=exceptions)


def prepared_from_json(data: Any) -> Prepared | None:
    if not isinstance(data, dict):
        return None
    status = next((s for s in PREPARE_STATUSES if data.get("status") == s), None)
    errors = data.get("input_errors") or []
    if status is None or not isinstance(errors, list):
        return None
    processed = data.get("processed_submission")
    return Prepared(status=status, input_errors=[str(e) for e in errors],
                    processed_submission=processed if isinstance(processed, str) else None,
                    exception=_shown(data.get("exception")))


def staff_report_from_json(data: Any) -> StaffReport | None:
    if not isinstance(data, dict):
        return None
    defaults = data.get("default_compare")
    if not isinstance(defaults, list) or not all(isinstance(d, bool) for d in defaults):
        defaults = None
    return StaffReport(prepare=prepared_from_json(data.get("prepare")),
                       tests=suite_report_from_json(data) if "grader" in data else None,
                       default_compare=defaults)


def compare_report_from_json(data: Any) -> CompareReport | None:
    if not isinstance(data, dict):
        return None
    if data.get("status") != "ok":
        return CompareReport(ok=False, exception=_shown(data.get("exception")))
    raw = data.get("verdicts")
    if not isinstance(raw, list):
        return CompareReport(ok=True, verdicts=None)
    verdicts = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2 or not isinstance(item[1], str):
            return CompareReport(ok=True, verdicts=None)
        verdicts.append(Verdict(bool(item[0]), item[1]))
    return CompareReport(ok=True, verdicts=verdicts)
