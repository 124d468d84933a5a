"""Logging: errors the event loop reports itself are logged once per kind and window."""

from __future__ import annotations

import logging

import pytest

from xqueue_grader.logs import RateLimitedLoopErrors


def test_loop_errors_are_logged_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    handler = RateLimitedLoopErrors(logging.getLogger("test.loop"), window=60)
    error = OSError(24, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="test.loop"):
        for _ in range(100):
            handler(None, {"message": "socket.accept() out of system resource", "exception": error})
        handler(None, {"message": "something else"})
    assert [r.getMessage() for r in caplog.records] == ["socket.accept() out of system resource", "something else"]
    handler.window = 0
    with caplog.at_level(logging.ERROR, logger="test.loop"):
        handler(None, {"message": "socket.accept() out of system resource", "exception": error})
    assert caplog.records[-1].fields["suppressed_since_last"] == 99  # type: ignore[attr-defined]
