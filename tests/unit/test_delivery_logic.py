"""Pure parts of callback delivery: how a failed attempt is described."""

from __future__ import annotations

import aiohttp

from xqueue_server.config import Settings
from xqueue_server.delivery import describe_failure

SETTINGS = Settings(callback_timeout_seconds=10, callback_connect_timeout_seconds=0.5)


def test_timeouts_name_the_limit_hit_and_never_the_url() -> None:
    url = "http://user:s3cret@lms.example/courses/x/score_update"
    connect = describe_failure(aiohttp.ConnectionTimeoutError(f"Connection timeout to host {url}"), SETTINGS)
    read = describe_failure(aiohttp.SocketTimeoutError(f"Timeout on reading data from socket {url}"), SETTINGS)
    total = describe_failure(TimeoutError(), SETTINGS)
    assert connect == "ConnectionTimeoutError: no connection within 0.5 s"
    assert read == "SocketTimeoutError: no answer within 10 s"
    assert total == "TimeoutError: no answer within 10 s"


def test_other_failures_keep_their_message() -> None:
    assert describe_failure(ConnectionRefusedError("refused"), SETTINGS) == "ConnectionRefusedError: refused"
