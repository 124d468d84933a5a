"""The XQueue wire protocol: the envelope, the exact strings clients depend on, and request parsing.

Pure functions only. Strings are copied letter for letter from upstream behaviour
(``shared/spec/xqueue-protocol.md`` §2): the LMS and xqueue-watcher compare some of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .validation import InputError, NotJson, parse_json, text_problem

# ---- exact upstream strings
LOGIN_REQUIRED = "login_required"
LOGGED_IN = "Logged in"
INCORRECT_CREDENTIALS = "Incorrect login credentials"
INSUFFICIENT_LOGIN_INFO = "Insufficient login info"
GOODBYE = "Goodbye"
STATUS_OK = "OK"
SUBMIT_NOT_POST = "Queue requests should use HTTP POST"
SUBMIT_INVALID_FORMAT = "Queue request has invalid format"
PUT_NOT_POST = "'put_result' must use HTTP POST"
INCORRECT_REPLY_FORMAT = "Incorrect reply format"
SUBMISSION_DOES_NOT_EXIST = "Submission does not exist"
INCORRECT_KEY = "Incorrect key for submission"
NOT_FOUND_BODY = "Xqueue 404 error."
SERVER_ERROR_BODY = "Xqueue 500 error."

# Upstream's post_failure_to_lms body, sent when a submission cannot be graded (poison).
FAILURE_NOTICE_BODY = json.dumps(
    {
        "correct": None,
        "score": 0,
        "msg": '<div class="capa_alert">Your submission could not be graded. Please recheck your '
        "submission and try again. If the problem persists, please notify the course staff.</div>",
    }
)


def queue_not_found(queue_name: str) -> str:
    return f"Queue '{queue_name}' not found"


def queue_empty(queue_name: str) -> str:
    return f"Queue '{queue_name}' is empty"


def missing_queue_param(endpoint: str) -> str:
    return f"'{endpoint}' must provide parameter 'queue_name'"


def valid_queue_names(names: list[str]) -> str:
    return "Valid queue names are: " + ", ".join(names)


def envelope(return_code: int, content: Any) -> dict[str, Any]:
    return {"return_code": return_code, "content": content}


def success(content: Any) -> dict[str, Any]:
    return envelope(0, content)


def failure(content: Any) -> dict[str, Any]:
    return envelope(1, content)


class ProtocolError(ValueError):
    """A request the protocol rejects; ``message`` goes into the envelope."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class LmsSubmission:
    queue_name: str
    callback_url: str
    xqueue_header: str
    xqueue_body: str


def parse_lms_submission(header: Any, body: Any, max_header_bytes: int, max_body_bytes: int) -> LmsSubmission:
    """Validate the submit form fields an LMS sends (upstream's ``_is_valid_request``, plus limits it lacked)."""
    if not isinstance(header, str) or not isinstance(body, str):
        raise ProtocolError(SUBMIT_INVALID_FORMAT)
    if "\x00" in header or "\x00" in body:
        # PostgreSQL text cannot store NUL; real LMS bodies are JSON, where NUL is escaped anyway.
        raise ProtocolError(f"{SUBMIT_INVALID_FORMAT}: NUL characters are not allowed")
    if text_problem(header) or text_problem(body):
        raise ProtocolError(f"{SUBMIT_INVALID_FORMAT}: not valid Unicode text")
    if len(header.encode()) > max_header_bytes:
        raise ProtocolError(f"{SUBMIT_INVALID_FORMAT}: xqueue_header is larger than {max_header_bytes} bytes")
    if len(body.encode()) > max_body_bytes:
        raise ProtocolError(f"{SUBMIT_INVALID_FORMAT}: xqueue_body is larger than {max_body_bytes} bytes")
    try:
        # Strict: every string inside (the LMS's key too) must be storable text; no NaN, no deep nesting.
        decoded = parse_json(header, "xqueue_header")
    except NotJson:
        raise ProtocolError(SUBMIT_INVALID_FORMAT) from None  # upstream's exact reply
    except InputError as exc:
        raise ProtocolError(f"{SUBMIT_INVALID_FORMAT}: {exc.message}") from None
    if not isinstance(decoded, dict):
        raise ProtocolError(SUBMIT_INVALID_FORMAT)
    for key in ("lms_callback_url", "lms_key", "queue_name"):
        if key not in decoded:
            raise ProtocolError(SUBMIT_INVALID_FORMAT)
    callback_url = decoded["lms_callback_url"]
    # Upstream crashed later (HTTP 500 at put_result) on a relative or non-http URL; reject it here.
    if not isinstance(callback_url, str) or not is_absolute_http_url(callback_url):
        raise ProtocolError(f"{SUBMIT_INVALID_FORMAT}: lms_callback_url must be an absolute http(s) URL")
    queue_name = decoded["queue_name"]
    if isinstance(queue_name, dict | list):
        raise ProtocolError(SUBMIT_INVALID_FORMAT)
    return LmsSubmission(
        queue_name=str(queue_name), callback_url=callback_url, xqueue_header=header, xqueue_body=body
    )


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def is_absolute_http_url(url: str) -> bool:
    if _CONTROL_CHARACTER.search(url) or text_problem(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class GraderReply:
    submission_id: int
    submission_key: str
    xqueue_body: str


def parse_grader_reply(header: Any, body: Any) -> GraderReply:
    """Validate a grader's put_result fields like upstream's ``_is_valid_reply``; a non-numeric id is an
    error, not a 500. (The grader's ``parse_server_reply`` reads the server's answer to it.)"""
    if not isinstance(header, str) or not isinstance(body, str):
        raise ProtocolError(INCORRECT_REPLY_FORMAT)
    if "\x00" in body or "\x00" in header:
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: NUL characters are not allowed")
    if text_problem(header) or text_problem(body):
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: not valid Unicode text")
    try:
        decoded = parse_json(header, "xqueue_header")
    except InputError:
        raise ProtocolError(INCORRECT_REPLY_FORMAT) from None
    if not isinstance(decoded, dict) or "submission_id" not in decoded or "submission_key" not in decoded:
        raise ProtocolError(INCORRECT_REPLY_FORMAT)
    raw_id = decoded["submission_id"]
    if isinstance(raw_id, bool):
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: submission_id must be an integer")
    try:
        submission_id = int(raw_id)
    except (TypeError, ValueError, OverflowError):
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: submission_id must be an integer") from None
    if isinstance(raw_id, float) and not raw_id.is_integer():
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: submission_id must be an integer")
    if not 0 < submission_id < 2**63:
        raise ProtocolError(SUBMISSION_DOES_NOT_EXIST)
    key = decoded["submission_key"]
    if not isinstance(key, str) or text_problem(key) or len(key) > 200:
        raise ProtocolError(INCORRECT_KEY)
    return GraderReply(submission_id=submission_id, submission_key=key, xqueue_body=body)


def submission_content(submission_id: int, pullkey: str, xqueue_body: str, file_urls: dict[str, str]) -> dict:
    """One pulled submission as graders expect it: header and files are JSON strings inside."""
    return {
        "xqueue_header": json.dumps({"submission_id": submission_id, "submission_key": pullkey}),
        "xqueue_body": xqueue_body,
        "xqueue_files": json.dumps(file_urls),
    }


def parse_positive_number(raw: str | None, name: str, cap: float) -> float | None:
    """Parse an optional numeric query parameter (wait=, max=), clamped to [0, cap]."""
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ProtocolError(f"parameter '{name}' must be a number") from None
    if value != value or value < 0:  # NaN or negative
        raise ProtocolError(f"parameter '{name}' must be a non-negative number")
    return min(value, cap)


def parse_grader_bulk_results(raw: str) -> list[tuple[Any, Any]]:
    """A grader's bulk put_result field: a JSON list of {"xqueue_header", "xqueue_body"} objects."""
    try:
        items = parse_json(raw, "results")
    except InputError as exc:
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: 'results' must be a JSON list ({exc.message})") from None
    if not isinstance(items, list):
        raise ProtocolError(f"{INCORRECT_REPLY_FORMAT}: 'results' must be a JSON list")
    parsed = []
    for item in items:
        if not isinstance(item, dict):
            parsed.append((None, None))
        else:
            parsed.append((item.get("xqueue_header"), item.get("xqueue_body")))
    return parsed
