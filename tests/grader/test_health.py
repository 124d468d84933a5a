"""Pure logic of the daemon's health: liveness vs readiness."""

from __future__ import annotations

from typing import Any

import pytest

from xqueue_grader.health import HealthState, liveness, readiness


def state(**changes: Any) -> HealthState:
    base: dict[str, Any] = {"started": True, "stopping": False, "logged_in": True, "sandbox_running": True,
                               "sandbox_broken": False, "sandbox_failing_for": None}
    base.update(changes)
    return HealthState(**base)


def test_a_working_daemon_is_alive_and_ready() -> None:
    assert liveness(state(), 60) == (True, "ok")
    assert readiness(state()) == (True, "ok")


def test_a_failing_sandbox_is_unready_at_once_and_not_alive_after_the_grace() -> None:
    early = state(sandbox_failing_for=5.0, sandbox_problem="scratch directory unusable")
    assert readiness(early) == (False, "sandbox not working: scratch directory unusable")
    assert liveness(early, 60)[0] is True
    late = state(sandbox_failing_for=61.0, sandbox_problem="scratch directory unusable")
    alive, reason = liveness(late, 60)
    assert not alive and "sandbox failing for 61 s" in reason


@pytest.mark.parametrize("changes", [{"sandbox_broken": True}, {"daemon_changes": ["RLIMIT_NOFILE"]}])
def test_what_a_restart_may_fix_fails_liveness(changes: dict[str, object]) -> None:
    assert liveness(state(**changes), 60)[0] is False
    assert readiness(state(**changes))[0] is False


@pytest.mark.parametrize(("changes", "reason"), [
    ({"logged_in": False}, "not logged in"), ({"stopping": True}, "draining"), ({"started": False}, "starting"),
])
def test_what_a_restart_cannot_fix_only_affects_readiness(changes: dict[str, object], reason: str) -> None:
    assert readiness(state(**changes)) == (False, reason)
    assert liveness(state(**changes), 60) == (True, "ok")
