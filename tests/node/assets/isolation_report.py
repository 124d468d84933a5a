"""Run inside a grader container (python - < this file): which isolation layers are really in force.

Prints one JSON object:
* "container": what the grader process itself has (/proc/self/status capabilities, no_new_privs,
  seccomp mode and filter count, uid, whether the root file system takes a write);
* "features": what the sandbox detected at start-up (the same report the daemon logs and exports);
* "child": what a student process run through the real sandbox observes about itself (it cannot
  read /proc, so it asks the kernel directly): its rlimits, capabilities (capget), seccomp mode
  and no_new_privs (prctl), whether it may open an IP socket, read the grader root or list /proc,
  and the names of its environment variables.

Evidence from inside the student process, not just the daemon's word for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys

from xqueue_grader.jobs import ScriptJob
from xqueue_grader.sandbox import Limits, SandboxPool, SandboxSettings

GRADER_ROOT = os.environ.get("XQGRADER_GRADER_ROOT", "/grader/course")
LIMITS = Limits(cpu_seconds=3, wall_seconds=8, memory_mb=200, processes=40, file_size_kb=512,
                output_kb=64, open_files=48)

STATUS_FIELDS = ("Uid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                 "Seccomp_filters")

CHILD = r'''
import ctypes, json, os, resource, socket
libc = ctypes.CDLL(None, use_errno=True)
names = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE",
         "RLIMIT_MEMLOCK")
class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
caps = "capget failed"
if libc.capget(ctypes.byref(header), data) == 0:
    caps = {k: getattr(data[0], k) | getattr(data[1], k) << 32 for k in ("effective", "permitted", "inheritable")}
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
report = {
    "rlimits": {n: list(resource.getrlimit(getattr(resource, n))) for n in names},
    "capabilities": caps,
    "seccomp_mode": libc.prctl(21, 0, 0, 0, 0),  # PR_GET_SECCOMP: 2 = filter
    "no_new_privs": libc.prctl(39, 0, 0, 0, 0),  # PR_GET_NO_NEW_PRIVS
    "inet_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()),
    "read_grader_root": attempt(lambda: os.listdir(ROOT)),
    "list_proc": attempt(lambda: os.listdir("/proc")),
    "environment": sorted(os.environ),
}
print(json.dumps(report))
'''


def proc_status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in STATUS_FIELDS:
                out[key] = value.strip()
    return out


def root_writable() -> str:
    try:
        with open("/isolation-report-probe", "w"):
            pass
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"
    os.unlink("/isolation-report-probe")
    return "writable"


async def child_report() -> tuple[dict[str, object], dict[str, object]]:
    pool = SandboxPool(SandboxSettings(hidden_paths=[GRADER_ROOT]))
    features = await pool.start()
    try:
        code = CHILD.replace("ROOT", repr(GRADER_ROOT))
        result = await pool.run(ScriptJob(code=code), LIMITS)
    finally:
        await pool.close()
    if result.status != "ok":
        return features, {"error": f"{result.status} {result.kill_reason} {result.stderr[-2000:]}"}
    return features, json.loads(result.stdout)


def main() -> None:
    features, child = asyncio.run(child_report())
    report = {
        "container": {"status": proc_status(), "root_fs": root_writable(), "euid": os.geteuid(),
                      "rlimit_nproc": list(resource.getrlimit(resource.RLIMIT_NPROC))},
        "features": {k: v for k, v in features.items() if k not in ("pid",)},
        "child": child,
        "expected_limits": LIMITS.to_dict(),
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
