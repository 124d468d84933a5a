"""The classic XQueue protocol as a grader speaks it: the server's replies, pulled submissions, put_result."""

from __future__ import annotations

import json

import pytest

from xqueue_grader.protocol import ProtocolError, is_empty_queue, parse_server_reply, parse_submission, put_result_form


def test_envelope_forms() -> None:
    assert parse_server_reply('{"return_code": 0, "content": "Logged in"}').ok
    reply = parse_server_reply('{"return_code": 1, "content": "Queue \'q\' is empty"}')
    assert not reply.ok and is_empty_queue(reply.content)
    legacy = parse_server_reply('{"success": true, "xqueue_header": "h"}')
    assert legacy.ok and legacy.content["xqueue_header"] == "h"
    for bad, message in (("not json", "Could not parse xreply."),
                         ('{"foo": 1}', "Cannot find a valid success or return code."),
                         ('{"success": "yes"}', "Invalid return code.")):
        with pytest.raises(ProtocolError, match=message.replace(".", r"\.")):
            parse_server_reply(bad)


def test_submission_content_is_a_json_string_with_string_header() -> None:
    header = json.dumps({"submission_id": 17, "submission_key": "k" * 32})
    content = json.dumps({"xqueue_header": header, "xqueue_body": "{}", "xqueue_files": "{}"})
    submission = parse_submission(content)
    assert submission.header == header  # echoed back verbatim
    assert submission.submission_id == "17"
    with pytest.raises(ProtocolError):
        parse_submission(json.dumps({"xqueue_body": "{}"}))
    # legacy servers may hand over a dict
    assert parse_submission({"xqueue_header": header, "xqueue_body": "{}"}).files == ""


def test_put_result_form_echoes_header_and_serialises_reply() -> None:
    form = put_result_form('{"submission_id": 1, "submission_key": "x"}', {"correct": True, "score": 1, "msg": "m"})
    assert form["xqueue_header"] == '{"submission_id": 1, "submission_key": "x"}'
    assert json.loads(form["xqueue_body"]) == {"correct": True, "score": 1, "msg": "m"}
