"""What a process inherits that another process of the same uid could change from outside:
resource limits, nice value, scheduling policy and I/O priority.

CPU affinity is left out on purpose: the kubelet's CPU manager changes the cpuset of every
shared-pool container when exclusive CPUs come and go, which would look like tampering.

The zygote records its state once; each supervisor (forked from it) compares before a run, so a
zygote whose limits were lowered or whose priority was dropped is noticed and replaced instead of
passing the damage on to every later run.  The daemon checks itself the same way for its liveness.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import resource
from typing import Any

RLIMITS = {
    name: getattr(resource, name)
    for name in ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
                 "RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
                 "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE",
                 "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
    if hasattr(resource, name)
}
_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}
_IOPRIO_WHO_PROCESS = 1
_libc: ctypes.CDLL | None = None


def _ioprio() -> int | None:
    global _libc
    number = _IOPRIO_GET.get(platform.machine())
    if number is None:
        return None
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    value = int(_libc.syscall(number, _IOPRIO_WHO_PROCESS, 0))
    return None if value < 0 else value


def snapshot() -> dict[str, Any]:
    """This process's state; JSON-friendly so it can travel to a supervisor as is."""
    state: dict[str, Any] = {name: list(resource.getrlimit(res)) for name, res in RLIMITS.items()}
    state["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    with contextlib.suppress(OSError, AttributeError):
        state["sched_policy"] = os.sched_getscheduler(0)
    with contextlib.suppress(OSError):
        state["ioprio"] = _ioprio()
    return state


def differences(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the settings that changed (pure)."""
    return sorted(key for key in baseline if current.get(key) != baseline[key])


def restore(baseline: dict[str, Any]) -> list[str]:
    """Put back what an unprivileged process can (soft limits up to the current hard limit);
    returns what is still different afterwards."""
    for name, res in RLIMITS.items():
        wanted = baseline.get(name)
        if not wanted:
            continue
        soft, hard = resource.getrlimit(res)
        if [soft, hard] == wanted:
            continue
        try:
            # Works when privileged (root on a developer machine) or when only the soft
            # limit was lowered.
            resource.setrlimit(res, (wanted[0], wanted[1]))
            continue
        except (OSError, ValueError):
            pass
        target_soft = wanted[0] if hard == resource.RLIM_INFINITY or (
            wanted[0] != resource.RLIM_INFINITY and wanted[0] <= hard) else hard
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(res, (target_soft, hard))
    # Each of these fails without privileges when it would raise our priority; then the
    # difference stays and the caller reports it.
    if "sched_policy" in baseline:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            os.sched_setscheduler(0, baseline["sched_policy"], os.sched_param(0))
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, int(baseline["nice"]))
    return differences(baseline, snapshot())
