"""Structured logging: the shared JSON shape (xqueue_common.jsonlog), one object per line on stderr.

Call sites pass structured data as ``extra={"fields": {...}}``.  Nothing logged may contain
credentials, cookies or student code; the formatter adds only what call sites give it, and
tracebacks carry exception classes and frames, never exception messages.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from xqueue_common.jsonlog import JsonFormatter
from xqueue_common.jsonlog import setup_logging as _setup_common

__all__ = ["JsonFormatter", "RateLimitedLoopErrors", "setup_logging"]


def setup_logging(level: str = "INFO") -> None:
    _setup_common(level, "json")


class RateLimitedLoopErrors:
    """An asyncio exception handler that logs each kind of error once per ``window`` seconds.

    asyncio's default handler logs every occurrence with a traceback: when the process runs out
    of file descriptors, accept() fails up to a hundred times per wake-up of the listening socket
    and the log drowns.  Here the first occurrence is logged, the rest are counted, and the count
    is reported with the next line of that kind.
    """

    def __init__(self, logger: logging.Logger, window: float = 60.0) -> None:
        self.logger = logger
        self.window = window
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, _loop: Any, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the event loop")
        exc = context.get("exception")
        key = message + "|" + (type(exc).__name__ if exc is not None else "")
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        fields: dict[str, Any] = {"suppressed_since_last": self._suppressed.pop(key, 0)}
        if exc is not None:
            fields["error"] = f"{type(exc).__name__}: {exc}"
        self.logger.error(message, extra={"fields": fields})
