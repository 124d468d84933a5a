"""A run's supervisor reply (xqueue_grader.sandbox.runs): typed when well formed, a sandbox error
when not - the supervisor and the results channel run under the sandbox's uid."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xqueue_grader.sandbox.runs import KillReason, RunResult, RunStatus, run_result_from_reply

REPLY: dict[str, Any] = {
    "status": "killed", "kill_reason": "wall", "exit_code": None, "signal": 9,
    "results": json.dumps({"grader": {"status": "ok"}}), "stdout": "out", "stderr": "", "stdout_bytes": 3,
    "stderr_bytes": 0, "cpu_seconds": 0.5, "wall_seconds": 3.0, "max_rss_kb": 9000, "leftovers_killed": 0,
    "setup_ms": 1.5, "cleanup_ms": 0.5,
}


def test_a_well_formed_reply_becomes_a_typed_result() -> None:
    result = run_result_from_reply(REPLY, total_ms=12.0, zygote_pid=42)
    assert result.status is RunStatus.KILLED and result.kill_reason is KillReason.WALL
    assert result.results == {"grader": {"status": "ok"}} and result.results_error is None
    assert (result.signal, result.stdout, result.total_ms, result.zygote_pid) == (9, "out", 12.0, 42)


@pytest.mark.parametrize("change", [
    {"status": "exploded"}, {"status": None}, {"kill_reason": "boredom"}, {"exit_code": "0"},
    {"stdout": b"bytes".hex().encode()}, {"cpu_seconds": "fast"}, {"signal": True},
])
def test_a_malformed_reply_is_a_sandbox_error(change: dict[str, Any]) -> None:
    result = run_result_from_reply({**REPLY, **change}, total_ms=1.0)
    assert result.status is RunStatus.SANDBOX_ERROR
    assert result.detail.startswith("invalid supervisor reply")


def test_a_refused_job_is_reported_as_unusable() -> None:
    result = run_result_from_reply({"status": "sandbox_error", "unusable": "zygote state changed: nice"}, 1.0)
    assert (result.status, result.unusable, result.detail) == (
        RunStatus.SANDBOX_ERROR, "zygote state changed: nice", "zygote state changed: nice")


@pytest.mark.parametrize(("channel", "error"), [
    ("{not json", "results channel did not hold valid JSON"),
    ("[1, 2]", "results channel did not hold a JSON object"),
    ("", None),
])
def test_the_results_channel_is_checked(channel: str, error: str | None) -> None:
    result = run_result_from_reply({**REPLY, "status": "ok", "kill_reason": None, "results": channel}, 1.0)
    assert result.status is RunStatus.OK and result.results is None and result.results_error == error


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(REPLY), "unusable"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6), max_size=8))
def test_any_reply_gives_a_result(reply: dict[str, Any]) -> None:
    assert isinstance(run_result_from_reply(reply, 1.0), RunResult)
