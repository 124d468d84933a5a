"""The classic XQueue protocol as a grader sees it: pure parsing, no I/O.

Course content (``grader_payload``, grader paths) is ``course.py``'s business.

Reply envelope: ``{"return_code": 0|1, "content": ...}`` (0 = success), or the legacy
``{"success": bool, ...}`` whose content is the whole object.  A pulled submission's content is a
JSON *string* holding ``xqueue_header`` (itself a JSON string echoed back untouched on
put_result), ``xqueue_body`` (the LMS body, a JSON string) and ``xqueue_files``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(ValueError):
    """A reply or submission that does not follow the protocol."""


@dataclass(frozen=True)
class ServerReply:
    """A reply from the XQueue server: the envelope decoded, ``content`` as the server sent it."""

    ok: bool
    content: Any


@dataclass(frozen=True)
class Submission:
    """One pulled submission, as handlers receive it."""

    header: str
    body: str
    files: str
    content: dict[str, Any] = field(default_factory=dict)

    @property
    def submission_id(self) -> str | None:
        """For logs only; never needed to reply (the header is echoed verbatim)."""
        try:
            header = json.loads(self.header)
        except ValueError:
            return None
        if isinstance(header, dict) and "submission_id" in header:
            return str(header["submission_id"])
        return None


@dataclass(frozen=True)
class Body:
    student_response: str
    grader_payload: str
    student_info: Any


_EMPTY_QUEUE = re.compile(r"^Queue '.*' is empty$", re.DOTALL)


def parse_server_reply(text: str) -> ServerReply:
    """Decode the server's 200 reply to one of our requests; raises ProtocolError with the
    watcher's messages.  (The server side parses the opposite direction: a grader's put_result.)"""
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError("Could not parse xreply.") from None
    if not isinstance(data, dict):
        raise ProtocolError("Cannot find a valid success or return code.")
    if "return_code" in data:
        return ServerReply(ok=data["return_code"] == 0, content=data.get("content"))
    if "success" in data:
        if not isinstance(data["success"], bool):
            raise ProtocolError("Invalid return code.")
        return ServerReply(ok=data["success"], content=data)
    raise ProtocolError("Cannot find a valid success or return code.")


def is_empty_queue(content: Any) -> bool:
    if isinstance(content, dict):  # legacy envelope: the message sits inside the whole reply
        content = content.get("content")
    return isinstance(content, str) and bool(_EMPTY_QUEUE.match(content))


def parse_submission(content: Any) -> Submission:
    """The get_submission content (a JSON string, or a dict from legacy servers)."""
    if isinstance(content, str):
        try:
            data = json.loads(content)
        except ValueError:
            raise ProtocolError("submission content is not JSON") from None
    else:
        data = content
    if not isinstance(data, dict):
        raise ProtocolError("submission content is not a JSON object")
    header = data.get("xqueue_header")
    if not isinstance(header, str) or not header:
        raise ProtocolError("submission has no xqueue_header")
    body = data.get("xqueue_body", "")
    files = data.get("xqueue_files", "")
    if not isinstance(body, str):
        body = json.dumps(body)
    if not isinstance(files, str):
        files = json.dumps(files)
    return Submission(header=header, body=body, files=files, content=data)


def parse_body(body: str) -> Body:
    """The LMS body: ``grader_payload`` (raw text), ``student_info``, ``student_response``."""
    try:
        data = json.loads(body)
    except ValueError:
        raise ProtocolError("xqueue_body is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("xqueue_body is not a JSON object")
    response = data.get("student_response")
    payload = data.get("grader_payload")
    if not isinstance(response, str):
        raise ProtocolError("xqueue_body has no student_response")
    if not isinstance(payload, str):
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        else:
            raise ProtocolError("xqueue_body has no grader_payload")
    return Body(student_response=response, grader_payload=payload, student_info=data.get("student_info"))


def put_result_form(header: str, reply: dict[str, Any]) -> dict[str, str]:
    """The put_result form: the header string echoed verbatim, the reply as JSON."""
    return {"xqueue_header": header, "xqueue_body": json.dumps(reply)}
