"""Structured logging: the shared shape of xqueue_common.jsonlog, one JSON object per line (or plain text).

Log calls pass context through ``extra={"fields": {...}}``. Never log passwords, session cookies,
tokens, pull keys, submission bodies, grader replies, file names or student code.

Exception *messages* are never written either, only their class, SQLSTATE and stack frames: they
echo input (``UnicodeEncodeError`` quotes the character, a ``KeyError`` its key) and PostgreSQL
errors carry row values in their detail ("Failing row contains (...)", "Key (name)=(...)").
"""

from __future__ import annotations

import logging
from typing import Any

from xqueue_common import jsonlog
from xqueue_common.jsonlog import JsonFormatter, TextFormatter, describe_exception, format_exception_safely

__all__ = ["JsonFormatter", "TextFormatter", "describe_exception", "error_fields", "format_exception_safely",
           "setup_logging"]


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """The shared setup, and records without what neither format writes.

    At INFO the server logs each submit, pull, result and delivery. By default every record also
    looks up its caller's frame (file, line, function), thread, process and asyncio task; neither
    format writes them, so this process skips them (the logging module's documented switches)."""
    jsonlog.setup_logging(level, fmt)
    logging._srcfile = None  # no findCaller()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+; harmless before


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
