"""The one log shape of every package: a JSON object per line on stderr (or plain text for humans).

Keys: ``ts`` (UTC, milliseconds, ``Z``), ``level`` (lower case), ``logger``, ``msg``, then the call site's
fields (``extra={"fields": {...}}``; a field never replaces one of the four keys), then ``exc`` when an
exception is attached.

Exception *messages* are never written, only their class, SQLSTATE and stack frames: they echo input
(``UnicodeEncodeError`` quotes the character, a ``KeyError`` its key, a failed PostgreSQL insert the row)
and may carry credentials. The formatter adds nothing but what call sites give it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

EXC_KEY = "exc"


def describe_exception(exc: BaseException) -> str:
    """``module.Class`` plus the SQLSTATE for database errors; never the message."""
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{name} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else name


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


def safe_default(value: Any) -> str:
    """JSON fallback for field values: exceptions by class only, anything else by str()."""
    return describe_exception(value) if isinstance(value, BaseException) else str(value)


# The formatted second of the last record: a busy server writes hundreds of lines per second, and
# strftime+gmtime was a visible share of each line's cost.
_last_second: tuple[int, str] = (-1, "")


def timestamp(record: logging.LogRecord) -> str:
    global _last_second
    second = int(record.created)
    cached = _last_second
    if cached[0] != second:
        cached = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int(record.msecs):03d}Z"


def log_entry(record: logging.LogRecord) -> dict[str, Any]:
    """The object one record becomes (pure; the formatter only serialises it)."""
    entry: dict[str, Any] = {
        "ts": timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        for key, value in fields.items():
            entry.setdefault(str(key), value)
    if record.exc_info and record.exc_info[1] is not None:
        entry[EXC_KEY] = format_exception_safely(record.exc_info[1])
    return entry


# json.dumps(..., default=...) builds a new encoder per call; one shared encoder holds only settings.
_encode = json.JSONEncoder(default=safe_default).encode


class JsonFormatter(logging.Formatter):
    def formatException(self, ei: Any) -> str:
        return format_exception_safely(ei[1]) if ei and ei[1] is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        return _encode(log_entry(record))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        # Not super().format: it would reuse an exc_text another handler rendered with the message.
        base = self.formatMessage(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={safe_default(v)}" for k, v in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            base += "\n" + format_exception_safely(record.exc_info[1])
        return base


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger to one stderr handler in ``fmt`` ("json" or "text") at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log repeats every probe request (and the server's own request metrics).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
