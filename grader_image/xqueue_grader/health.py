"""Liveness and readiness of the grader daemon, decided from a snapshot of its state (pure).

The two probes must not disagree forever: whatever makes the daemon unable to grade and cannot
be repaired from inside (a sandbox that keeps failing, limits of the daemon process itself
lowered by someone else) first makes it unready and, after ``grace`` seconds, not alive, so the
kubelet restarts the pod.  What a restart cannot fix (the XQueue server down, a drain in
progress) only ever affects readiness.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HealthState:
    started: bool
    stopping: bool
    logged_in: bool
    sandbox_running: bool
    # The sandbox pool has no restarts left this minute.
    sandbox_broken: bool
    # Seconds since the first of the runs or self-tests that failed for reasons of the sandbox
    # with none working since; None while it works.
    sandbox_failing_for: float | None
    sandbox_problem: str | None = None
    # Settings of the daemon process that differ from its start and could not be put back.
    daemon_changes: list[str] = field(default_factory=list)


def liveness(state: HealthState, grace: float) -> tuple[bool, str]:
    """(alive, reason); "not alive" asks for a restart."""
    if state.daemon_changes:
        return False, "daemon process settings changed: " + ", ".join(state.daemon_changes)
    if state.sandbox_broken:
        return False, "sandbox cannot be restarted"
    if state.sandbox_failing_for is not None and state.sandbox_failing_for > grace:
        return False, f"sandbox failing for {state.sandbox_failing_for:.0f} s: {state.sandbox_problem or 'unknown'}"
    return True, "ok"


def readiness(state: HealthState) -> tuple[bool, str]:
    """(ready, reason); "not ready" keeps the pod out of service without restarting it."""
    if not state.started:
        return False, "starting"
    if state.stopping:
        return False, "draining"
    if not state.logged_in:
        return False, "not logged in"
    if not state.sandbox_running or state.sandbox_broken or state.sandbox_failing_for is not None:
        return False, "sandbox not working" + (f": {state.sandbox_problem}" if state.sandbox_problem else "")
    if state.daemon_changes:
        return False, "daemon process settings changed"
    return True, "ok"
