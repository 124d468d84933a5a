"""Pure parts of callback delivery (delivery.py): how a failed attempt is described, when the next one is due."""

from __future__ import annotations

import random

import aiohttp
import pytest

from xqueue_server.config import Settings
from xqueue_server.delivery import backoff_delay, describe_failure, next_step

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


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(1, 10)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] <= 60.0


def test_next_step_dead_letters_after_the_horizon() -> None:
    settings = Settings(callback_horizon_seconds=100, callback_backoff_base_seconds=1, callback_backoff_max_seconds=50)
    assert next_step(100.0, 5, settings) is None
    assert next_step(99.5, 20, settings) == pytest.approx(0.5)  # the last try lands on the horizon
    step = next_step(0.0, 1, settings)
    assert step is not None and 0.5 <= step <= 1.0
