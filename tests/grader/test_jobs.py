"""The shapes that cross into the sandbox and back (xqueue_grader.jobs): jobs survive their JSON
form, malformed jobs are refused, and what comes back from the sandbox is read as untrusted."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xqueue_grader.jobs import (
    CompareJob,
    CompareReport,
    GraderCode,
    ImportReport,
    JobError,
    Prepared,
    ResultRow,
    ScriptJob,
    StaffJob,
    StaffReport,
    StudentJob,
    SuiteReport,
    Verdict,
    compare_report_from_json,
    compare_report_to_json,
    job_from_json,
    job_to_json,
    staff_report_from_json,
    staff_report_to_json,
    suite_report_from_json,
    suite_report_to_json,
    valid_rows,
)

GRADER = GraderCode(name="grade_square", source="grader = None\n", seed=17, translations=None, output_limit=4096)


@pytest.mark.parametrize("job", [
    StaffJob(GRADER, answer="def square(x): return x * x\n", submission="def square(x): return x\n"),
    StudentJob(GRADER, code="def square(x): return x\n"),
    CompareJob(GRADER, pairs=[("1\n", "1\n"), ("4\n", "5\n")]),
    ScriptJob(code="print(open('data.bin', 'rb').read())", files={"data.bin": b"\x00\xff"}, filename="x.py"),
])
def test_every_job_survives_its_json_form(job: Any) -> None:
    document = json.loads(json.dumps(job_to_json(job)))  # exactly what crosses the socket
    assert job_from_json(document) == job


@pytest.mark.parametrize(("document", "fragment"), [
    ("not an object", "JSON object"),
    ({"mode": "shell", "code": "x"}, "unknown mode"),
    ({"mode": "script"}, "'code'"),
    ({"mode": "script", "code": "x", "files": {"../escape": ""}}, "plain name"),
    ({"mode": "script", "code": "x", "files": {"a": "***"}}, "base64"),
    ({"mode": "student", "grader_name": "g", "grader_source": "", "seed": "1", "code": ""}, "'seed'"),
    ({"mode": "compare", "grader_name": "g", "grader_source": "", "seed": 1, "pairs": [["only one"]]}, "pairs"),
])
def test_malformed_jobs_are_refused(document: Any, fragment: str) -> None:
    with pytest.raises(JobError, match=fragment):
        job_from_json(document)


def test_script_files_must_be_plain_names() -> None:
    for name in ("a/b", "", ".", ".."):
        with pytest.raises(JobError):
            ScriptJob(code="", files={name: b""})


def test_harness_reports_survive_their_json_form() -> None:
    tests = SuiteReport(grader=ImportReport("ok", None, ""), submission=ImportReport("ok", None, "hello\n"),
                        rows=[ResultRow("t1", None, "1\n"), ResultRow("t2", "long", "4\n")], exceptions=0)
    assert suite_report_from_json(suite_report_to_json(tests)) == tests
    staff = StaffReport(prepare=Prepared("ok", processed_submission="x = 1\n"), tests=tests,
                        default_compare=[True, False])
    assert staff_report_from_json(staff_report_to_json(staff)) == staff
    stopped = StaffReport(prepare=Prepared("ok", input_errors=["no loops allowed"]))
    assert staff_report_from_json(staff_report_to_json(stopped)) == stopped
    compare = CompareReport(ok=True, verdicts=[Verdict(True), Verdict(False, "\n*** ERROR: x ***")])
    assert compare_report_from_json(compare_report_to_json(compare)) == compare


def test_forged_rows_are_rejected() -> None:
    assert valid_rows([["t", None, "out"]]) == [("t", None, "out")]
    for forged in ("x", [["t", None]], [[1, None, "o"]], [["t", 5, "o"]], None):
        assert valid_rows(forged) is None


def test_a_forged_student_document_keeps_only_what_has_the_right_shape() -> None:
    forged = suite_report_from_json({"grader": {"status": "ok"}, "submission": {"status": 3, "exception": 42},
                                     "results": [["t", None, "fine"], "junk"], "exceptions": "lots"})
    assert forged is not None
    assert forged.grader == ImportReport("ok", None, "")
    assert forged.submission is not None and not forged.submission.ok and forged.submission.exception == "42"
    assert forged.rows is None  # one malformed row discards them all
    assert forged.exceptions == 1 and not forged.all_ran
    assert suite_report_from_json(["not", "an", "object"]) is None
    assert compare_report_from_json({"status": "ok", "verdicts": [[True, 5]]}) == CompareReport(ok=True)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["grader", "submission", "results", "exceptions", "prepare", "status", "exception",
                         "input_errors", "processed_submission", "default_compare", "verdicts", "stdout"]),
        children, max_size=6),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_reading_any_document_from_the_sandbox_never_raises(document: Any) -> None:
    suite_report_from_json(document)
    staff_report_from_json(document)
    compare_report_from_json(document)
