"""Structured logging: one JSON object per line (or plain text for humans).

Log calls pass context through ``extra={"fields": {...}}``. Never log passwords, session cookies,
tokens, pull keys, submission bodies, grader replies, file names or student code.

Exception *messages* are never written either, only their class, SQLSTATE and stack frames: they
echo input (``UnicodeEncodeError`` quotes the character, a ``KeyError`` its key) and PostgreSQL
errors carry row values in their detail ("Failing row contains (...)", "Key (name)=(...)").
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any


def describe_exception(exc: BaseException) -> str:
    """``module.Class`` plus the SQLSTATE for database errors; never the message."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{name} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else name


def error_fields(exc: BaseException) -> dict[str, Any]:
    """Log fields for an error: its class and SQLSTATE (and those of its cause), nothing it quotes."""
    fields: dict[str, Any] = {"error": type(exc).__name__}
    sqlstate = getattr(exc, "sqlstate", None)
    cause = exc.__cause__
    if cause is not None:
        fields["cause"] = type(cause).__name__
        sqlstate = sqlstate or getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str):
        fields["sqlstate"] = sqlstate
    return fields


def format_exception_safely(exc: BaseException) -> str:
    """A traceback (frames and exception classes, causes included) without any exception message."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain) and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    blocks = []
    for item in reversed(chain):
        frames = "".join(traceback.format_list(traceback.extract_tb(item.__traceback__)))
        blocks.append(f"Traceback (most recent call last):\n{frames}{describe_exception(item)}")
    return "\n\nwhich led to:\n\n".join(blocks)


def _safe_default(value: Any) -> str:
    return describe_exception(value) if isinstance(value, BaseException) else str(value)


class JsonFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return format_exception_safely(ei[1]) if ei and ei[1] is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=_safe_default)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        # Not super().format: it would reuse an exc_text another handler rendered with the message.
        base = self.formatMessage(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={_safe_default(v)}" for k, v in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            base += "\n" + format_exception_safely(record.exc_info[1])
        return base


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats what our request metrics record; keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
