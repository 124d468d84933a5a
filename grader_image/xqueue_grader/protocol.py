"""The classic XQueue protocol as a grader sees it: pure parsing, no I/O.

Reply envelope: ``{"return_code": 0|1, "content": ...}`` (0 = success), or the legacy
``{"success": bool, ...}`` whose content is the whole object.  A pulled submission's content is a
JSON *string* holding ``xqueue_header`` (itself a JSON string echoed back untouched on
put_result), ``xqueue_body`` (the LMS body, a JSON string) and ``xqueue_files``.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any


class ProtocolError(ValueError):
    """A reply or submission that does not follow the protocol."""


@dataclass(frozen=True)
class Reply:
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


def parse_reply(text: str) -> Reply:
    """Decode a 200 reply; raises ProtocolError with the watcher's messages."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ProtocolError("Could not parse xreply.") from None
    if not isinstance(data, dict):
        raise ProtocolError("Cannot find a valid success or return code.")
    if "return_code" in data:
        return Reply(ok=data["return_code"] == 0, content=data.get("content"))
    if "success" in data:
        if not isinstance(data["success"], bool):
            raise ProtocolError("Invalid return code.")
        return Reply(ok=data["success"], content=data)
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


def submission_batch(content: Any) -> list[Any]:
    """Bulk-pull content is a JSON list of single-pull contents."""
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except ValueError:
            raise ProtocolError("batch content is not JSON") from None
    if not isinstance(content, list):
        raise ProtocolError("batch content is not a list")
    return content


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


def parse_grader_payload(payload: str) -> dict[str, Any]:
    """``grader_payload`` is JSON text written by the course author (often with whitespace)."""
    try:
        config = json.loads(payload)
    except ValueError:
        raise ProtocolError("grader_payload is not JSON") from None
    if not isinstance(config, dict):
        raise ProtocolError("grader_payload is not a JSON object")
    return config


def flag(config: dict[str, Any], name: str) -> bool:
    """Payload flags arrive as booleans or strings ("true") depending on how XML was written."""
    value = config.get(name, False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def check_grader_path(relative: Any) -> str:
    """Lexical check of the payload's ``grader`` path; returns it normalised.

    Rejects absolute paths, ``..`` anywhere, NUL bytes and empty names.  The caller must also
    check the resolved (symlink-free) path stays inside the grader root.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ProtocolError("grader_payload has no 'grader' path")
    if "\x00" in relative or "\\" in relative:
        raise ProtocolError("grader path contains forbidden characters")
    if relative.startswith("/"):
        raise ProtocolError("grader path must be relative to the grader root")
    parts = relative.split("/")
    if any(part == ".." for part in parts):
        raise ProtocolError("grader path must not contain '..'")
    normalised = posixpath.normpath(relative)
    if normalised in (".", "") or normalised.startswith("../"):
        raise ProtocolError("grader path must name a file below the grader root")
    if not normalised.endswith(".py"):
        raise ProtocolError("grader path must name a .py file")
    return normalised


def is_inside(path: str, root: str) -> bool:
    """Both paths already resolved (realpath); True when ``path`` is ``root`` or below it."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/")


def module_name_for(grader_path: str) -> str:
    """A Python identifier for the grader module (the file's stem, sanitised)."""
    stem = posixpath.splitext(posixpath.basename(grader_path))[0]
    name = re.sub(r"\W", "_", stem) or "grader"
    if name[0].isdigit():
        name = "_" + name
    if name == "submission":
        name = "grader_submission"  # the student's module owns the name "submission"
    return name


def put_result_form(header: str, reply: dict[str, Any]) -> dict[str, str]:
    """The put_result form: the header string echoed verbatim, the reply as JSON."""
    return {"xqueue_header": header, "xqueue_body": json.dumps(reply)}
