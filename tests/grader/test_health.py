"""Pure logic of the daemon's health: liveness vs readiness, the once-a-minute loop error log,
the layer report, and the comparison of process settings."""

from __future__ import annotations

import logging

import pytest

from xqueue_grader.health import HealthState, liveness, readiness
from xqueue_grader.logs import RateLimitedLoopErrors
from xqueue_grader.sandbox import procstate, report


def state(**changes: object) -> HealthState:
    base: dict[str, object] = {"started": True, "stopping": False, "logged_in": True, "sandbox_running": True,
                               "sandbox_broken": False, "sandbox_failing_for": None}
    base.update(changes)
    return HealthState(**base)  # type: ignore[arg-type]


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


def test_the_layer_report_names_what_is_missing() -> None:
    probes = {"unix_socket": True, "datagram_socketpair": True, "netlink_socket": True, "sysv_ipc": True,
              "prlimit_other": True, "setpriority_other": True, "chmod": True, "utime": True}
    full = report.layers({"seccomp": True, "seccomp_denies": probes, "landlock": True, "landlock_abi": 7,
                          "ipc_namespace": True, "capabilities": "0", "rlimits": True, "no_new_privs": True})
    assert all(full["seccomp"]["classes"].values()) and full["landlock"]["signal_and_abstract_socket_scope"]
    assert report.missing(full) == []
    partial = report.layers({"seccomp": True, "seccomp_denies": {**probes, "sysv_ipc": False},
                             "landlock_abi": 0, "capabilities": "20"})
    assert report.missing(partial) == ["seccomp:sysv_ipc", "landlock", "capabilities"]


def test_process_settings_differences() -> None:
    now = procstate.snapshot()
    assert procstate.differences(now, procstate.snapshot()) == []
    changed = {**now, "nice": now["nice"] + 5, "RLIMIT_NOFILE": [3, 3]}
    assert procstate.differences(changed, now) == ["RLIMIT_NOFILE", "nice"]
