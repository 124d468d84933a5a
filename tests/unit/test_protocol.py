"""The wire protocol's pure parsing and shaping (protocol.py): what the LMS and graders send, what they get."""

from __future__ import annotations

import json

import pytest

from xqueue_server import protocol as p

HEADER = json.dumps({"lms_callback_url": "https://lms.example/cb", "lms_key": "k", "queue_name": "q"})


def test_parse_submit_accepts_the_lms_header_and_keeps_it_verbatim() -> None:
    parsed = p.parse_lms_submission(HEADER, "body", 10_000, 10_000)
    assert parsed == p.LmsSubmission("q", "https://lms.example/cb", HEADER, "body")


@pytest.mark.parametrize("header", ["", "{", "[]", "1", json.dumps({"lms_key": "k", "queue_name": "q"}),
                                    json.dumps({"lms_callback_url": "/rel", "lms_key": "k", "queue_name": "q"}),
                                    json.dumps({"lms_callback_url": "ftp://x/y", "lms_key": "k", "queue_name": "q"})])
def test_parse_submit_rejects_bad_headers(header: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_lms_submission(header, "", 10_000, 10_000)
    assert err.value.message.startswith("Queue request has invalid format")


def test_parse_submit_coerces_queue_name_like_upstream() -> None:
    header = json.dumps({"lms_callback_url": "http://lms/cb", "lms_key": "k", "queue_name": 42})
    assert p.parse_lms_submission(header, "", 10_000, 10_000).queue_name == "42"


def test_parse_submit_enforces_size_limits() -> None:
    with pytest.raises(p.ProtocolError, match="larger than 10 bytes"):
        p.parse_lms_submission(HEADER, "x" * 11, 10_000, 10)


@pytest.mark.parametrize(("header", "message"), [
    ("{", "Incorrect reply format"),
    (json.dumps({"submission_id": 1}), "Incorrect reply format"),
    (json.dumps({"submission_id": "x", "submission_key": "k"}),
     "Incorrect reply format: submission_id must be an integer"),
    (json.dumps({"submission_id": 0, "submission_key": "k"}), "Submission does not exist"),
    (json.dumps({"submission_id": 1, "submission_key": 5}), "Incorrect key for submission"),
])
def test_parse_reply_errors(header: str, message: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_grader_reply(header, "{}")
    assert err.value.message == message


def test_parse_reply_accepts_numeric_strings_like_upstream() -> None:
    parsed = p.parse_grader_reply(json.dumps({"submission_id": "17", "submission_key": "abc"}), "{}")
    assert (parsed.submission_id, parsed.submission_key) == (17, "abc")


def test_submission_content_nests_json_strings() -> None:
    content = p.submission_content(3, "key", "body", {"a.py": "http://x/a"})
    assert json.loads(content["xqueue_header"]) == {"submission_id": 3, "submission_key": "key"}
    assert json.loads(content["xqueue_files"]) == {"a.py": "http://x/a"}


def test_failure_notice_is_upstreams_exact_body() -> None:
    assert json.loads(p.FAILURE_NOTICE_BODY) == {
        "correct": None, "score": 0,
        "msg": '<div class="capa_alert">Your submission could not be graded. Please recheck your submission and '
               "try again. If the problem persists, please notify the course staff.</div>"}
