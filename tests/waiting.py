"""The one way tests wait for a condition: poll until it holds, bounded in time, and say what was
awaited when it does not (every test package imports these; tests/grader/helpers.py re-exports them).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


def _timed_out(what: str, seconds: float, last: object) -> AssertionError:
    detail = f"; last: {last!r}" if last is not None else ""
    return AssertionError(f"timed out after {seconds} s waiting for {what}{detail}")


async def wait_until(predicate: Callable[[], object | Awaitable[object]], seconds: float, what: str,
                     interval: float = 0.05, detail: Callable[[], object] | None = None) -> Any:
    """Poll ``predicate`` (plain or async) until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` (and ``detail()``, the state worth seeing) once
    ``seconds`` have passed.
    """
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, seconds, detail() if detail else None)
        await asyncio.sleep(interval)


def wait_until_blocking(predicate: Callable[[], object], seconds: float, what: str, interval: float = 0.05,
                        detail: Callable[[], object] | None = None) -> Any:
    """``wait_until`` for tests without an event loop (the predicate may block, e.g. on HTTP)."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, seconds, detail() if detail else None)
        time.sleep(interval)
