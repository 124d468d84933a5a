"""What one sandboxed run ended as: the supervisor's reply and its typed, validated form (pure).

The supervisor (``zygote.supervise``) sends a ``SupervisorReply`` over the run's socket; the pool
turns it into a ``RunResult`` with ``run_result_from_reply``.  The supervisor runs under the
sandbox's uid, the results channel inside the reply is written by the run itself, so both are
untrusted here: anything that does not have the documented shape becomes a ``sandbox_error``
(reply) or ``results_error`` (channel), never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict


class RunStatus(StrEnum):
    OK = "ok"                        # the run exited 0
    FAILED = "failed"                # it exited non-zero
    KILLED = "killed"                # a limit stopped it (see KillReason)
    SETUP_FAILED = "setup_failed"    # the sandbox could not be entered: nothing ran
    SANDBOX_ERROR = "sandbox_error"  # the machinery failed (zygote, supervisor, socket)


# Runs ending like this say nothing about the submission but something about the sandbox.
SANDBOX_FAILURES = frozenset({RunStatus.SANDBOX_ERROR, RunStatus.SETUP_FAILED})


class KillReason(StrEnum):
    WALL = "wall"                  # wall clock (the supervisor kills the process group)
    CPU = "cpu"                    # RLIMIT_CPU (SIGXCPU, then SIGKILL)
    MEMORY = "memory"              # killed near RLIMIT_AS
    OUTPUT = "output"              # stdout/stderr flood far beyond the kept part
    DISK = "disk"                  # the run directory's quota
    FILE_SIZE = "file_size"        # RLIMIT_FSIZE (SIGXFSZ)
    RESULTS_TOO_LARGE = "results_too_large"  # the results channel beyond its cap
    SIGNAL = "signal"              # any other deadly signal


class SupervisorReply(TypedDict, total=False):
    """The frame a supervisor sends back (``unusable`` alone when the zygote refused the job)."""

    status: str
    kill_reason: str | None
    exit_code: int | None
    signal: int | None
    results: str | None  # the results channel, as text
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    cpu_seconds: float
    wall_seconds: float
    max_rss_kb: int
    leftovers_killed: int
    setup_ms: float
    cleanup_ms: float
    unusable: str


@dataclass
class RunResult:
    """What one sandboxed run produced, as reported by its supervisor."""

    status: RunStatus
    kill_reason: KillReason | None = None
    exit_code: int | None = None
    signal: int | None = None
    # The results channel's JSON object (untrusted: written by the run; see xqueue_grader.jobs).
    results: dict[str, Any] | None = None
    results_error: str | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    max_rss_kb: int = 0
    leftovers_killed: int = 0
    setup_ms: float = 0.0
    cleanup_ms: float = 0.0
    total_ms: float = 0.0
    detail: str = ""
    # Set when the zygote refused the job before running anything (its scratch directory or its
    # inherited limits are damaged): the pool replaces the zygote and runs the job again.
    unusable: str | None = None
    zygote_pid: int | None = None


class ReplyError(ValueError):
    """A supervisor reply without the documented shape."""


def _optional_int(reply: dict[str, Any], key: str) -> int | None:
    value = reply.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReplyError(f"{key} is not an integer")
    return value


def _number(reply: dict[str, Any], key: str) -> float:
    value = reply.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReplyError(f"{key} is not a number")
    return float(value)


def _text(reply: dict[str, Any], key: str) -> str:
    value = reply.get(key, "")
    if not isinstance(value, str):
        raise ReplyError(f"{key} is not text")
    return value


def parse_results_channel(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the channel's JSON object, or None with the reason); an empty channel is no error."""
    if raw is None or raw == "":
        return None, None
    if not isinstance(raw, str):
        return None, "results channel is not text"
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None, "results channel did not hold valid JSON"
    if not isinstance(parsed, dict):
        return None, "results channel did not hold a JSON object"
    return parsed, None


def run_result_from_reply(reply: dict[str, Any], total_ms: float, zygote_pid: int | None = None) -> RunResult:
    """Validate a supervisor's reply; a malformed one becomes a ``sandbox_error`` result."""
    try:
        return _from_reply(reply, total_ms, zygote_pid)
    except (ReplyError, ValueError) as exc:
        return RunResult(status=RunStatus.SANDBOX_ERROR, detail=f"invalid supervisor reply: {exc}",
                         total_ms=total_ms, zygote_pid=zygote_pid)


def _from_reply(reply: dict[str, Any], total_ms: float, zygote_pid: int | None) -> RunResult:
    unusable = reply.get("unusable")
    if unusable:
        return RunResult(status=RunStatus.SANDBOX_ERROR, detail=str(unusable), unusable=str(unusable),
                         total_ms=total_ms, zygote_pid=zygote_pid)
    status = RunStatus(_text(reply, "status"))  # ValueError for anything but a RunStatus
    raw_reason = reply.get("kill_reason")
    kill_reason = None if raw_reason is None else KillReason(raw_reason)
    results, results_error = parse_results_channel(reply.get("results"))
    return RunResult(
        status=status,
        kill_reason=kill_reason,
        exit_code=_optional_int(reply, "exit_code"),
        signal=_optional_int(reply, "signal"),
        results=results,
        results_error=results_error,
        stdout=_text(reply, "stdout"),
        stderr=_text(reply, "stderr"),
        stdout_bytes=int(_number(reply, "stdout_bytes")),
        stderr_bytes=int(_number(reply, "stderr_bytes")),
        cpu_seconds=_number(reply, "cpu_seconds"),
        wall_seconds=_number(reply, "wall_seconds"),
        max_rss_kb=int(_number(reply, "max_rss_kb")),
        leftovers_killed=int(_number(reply, "leftovers_killed")),
        setup_ms=_number(reply, "setup_ms"),
        cleanup_ms=_number(reply, "cleanup_ms"),
        total_ms=total_ms,
        zygote_pid=zygote_pid,
    )
