"""Course content: LMS body and grader_payload parsing, grader path checks, module names."""

from __future__ import annotations

import json

import pytest

from xqueue_grader.course import check_grader_path, flag, is_inside, module_name_for, parse_grader_payload
from xqueue_grader.protocol import ProtocolError, parse_body


def test_body_and_payload_parsing() -> None:
    body = parse_body(json.dumps({"grader_payload": ' {"grader": "a/b.py", "hide_output": "true"} ',
                                  "student_response": "x = 1", "student_info": "{}"}))
    config = parse_grader_payload(body.grader_payload)
    assert config["grader"] == "a/b.py" and flag(config, "hide_output") and not flag(config, "skip_grader")
    with pytest.raises(ProtocolError):
        parse_body(json.dumps({"grader_payload": "{}"}))
    with pytest.raises(ProtocolError):
        parse_grader_payload("not json")


@pytest.mark.parametrize("path", ["../x/grade.py", "a/../../grade.py", "/etc/grade.py", "a\x00.py", "",
                                  "a\\..\\b.py", "a/answer.txt", "."])
def test_grader_path_traversal_is_rejected(path: str) -> None:
    with pytest.raises(ProtocolError):
        check_grader_path(path)


def test_grader_path_normalisation_and_containment() -> None:
    assert check_grader_path("./square//grade_square.py") == "square/grade_square.py"
    assert is_inside("/g/course/a.py", "/g/course")
    assert not is_inside("/g/course2/a.py", "/g/course")
    assert module_name_for("x/grade-hello.py") == "grade_hello"
    assert module_name_for("x/1st.py") == "_1st"
    assert module_name_for("x/submission.py") == "grader_submission"
