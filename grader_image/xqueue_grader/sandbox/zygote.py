"""The fork server ("zygote"), the per-run supervisor and the sandboxed child.

Process tree::

    daemon (asyncio; holds credentials)            <- never forks student code itself
      └─ zygote (fresh interpreter, scrubbed env, pre-imported harness; no secrets)
           └─ supervisor (one per run; enforces wall clock, output caps, disk quota; cleans up)
                └─ child (setsid, rlimits, Landlock, seccomp, then the harness + student code)

Why a zygote: starting Python costs tens of milliseconds; forking a warm interpreter costs about
one.  Why a separate supervisor per run: it can block on its own run's pipes and kill its whole
process group without an event loop, and it is the subreaper that catches any process the run
tried to detach.  The zygote and supervisors are non-dumpable, so a student process running under
the same uid can neither ptrace them nor read their /proc files.

The daemon talks to the zygote over a private socketpair (inherited, never in the file system);
for each run it passes one end of a fresh socketpair with SCM_RIGHTS, and the supervisor forked
for it reads the job from that socket and writes the result back.  Student code can reach neither
socket: every fd except stdio and the results pipe is closed before the harness starts.
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import os
import resource
import select
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from xqueue_grader.runtime import harness
from xqueue_grader.sandbox import landlock, namespaces, prctl, procstate, seccomp, wire
from xqueue_grader.sandbox.limits import Limits, apply_rlimits
from xqueue_grader.sandbox.runs import KillReason, RunStatus, SupervisorReply

RUNTIME_DIR = os.path.dirname(os.path.abspath(harness.__file__))
LEGACY_DIR = os.path.join(RUNTIME_DIR, "legacy")
SETUP_FAILED_EXIT = 121
# The results channel only carries short strings per test; anything beyond this is an attack.
RESULTS_CAP = 16 * 1024 * 1024
# Modules commonly used by graders and exercises; importing them in the zygote makes every run
# start warm and lets the sandbox deny reads of most of the file system.
DEFAULT_PRELOAD = (
    "json", "random", "math", "cmath", "re", "string", "tokenize", "io", "traceback", "linecache",
    "types", "contextlib", "inspect", "gettext", "collections", "itertools", "functools",
    "operator", "copy", "decimal", "fractions", "statistics", "datetime", "time", "heapq",
    "bisect", "textwrap", "typing", "dataclasses", "enum", "numbers", "pprint", "abc", "struct",
    "hashlib", "base64", "unicodedata", "array", "queue", "threading", "ast", "keyword",
    "subprocess", "socket", "encodings.idna", "encodings.latin_1", "encodings.ascii",
)
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    # Numeric libraries would otherwise start one thread per core, each counting against NPROC.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass
class SandboxPaths:
    """What the child may touch besides its own run directory (computed once in the zygote)."""

    read_dirs: list[str] = field(default_factory=list)
    read_files: list[str] = field(default_factory=list)
    rw_files: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)


@dataclass
class ZygoteConfig:
    ctl_fd: int
    scratch: str
    # Signal targets student code must never reach: the daemon, its process group, the zygote.
    protected_pids: list[int]
    hidden_paths: list[str]
    preload: list[str]
    require_seccomp: bool = False
    require_landlock: bool = False
    disable: tuple[str, ...] = ()
    landlock_abi: int = 0
    seccomp_ok: bool = False
    paths: SandboxPaths = field(default_factory=SandboxPaths)
    landlock_rules: list[landlock.PathRule] = field(default_factory=list)
    seccomp_filter: seccomp.CompiledFilter | None = None
    # A private user + IPC namespace per run (where the kernel allows it).
    ipc_namespace: bool = False
    # The zygote's own limits and priorities once set up: supervisors compare before each run.
    baseline: dict[str, Any] = field(default_factory=dict)


def _inside(path: str, parent: str) -> bool:
    path = os.path.normpath(path)
    parent = os.path.normpath(parent)
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def compute_paths(hidden: list[str]) -> SandboxPaths:
    """What the interpreter needs to read; never "/" and nothing inside a hidden path.

    The interpreter's own prefixes are indispensable: if a hidden path (the grader root, the
    scratch directory) lies inside one of them we still allow it and report the exposure, so the
    operator sees it at start-up.  Other ``sys.path`` entries containing a hidden path are left out.
    """
    essential = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                 "/usr", "/lib", "/lib64", "/lib32", "/bin"]
    optional = [p for p in sys.path if p]
    read_dirs: list[str] = []
    exposed: list[str] = []
    for raw, required in [(p, True) for p in essential] + [(p, False) for p in optional]:
        for path in dict.fromkeys([os.path.normpath(raw), os.path.realpath(raw)]):
            if path == "/" or path in read_dirs or not os.path.isdir(path):
                continue
            if any(_inside(path, h) for h in hidden):
                continue
            covered = [h for h in hidden if _inside(h, path)]
            if covered and not required:
                continue
            exposed += [h for h in covered if h not in exposed]
            read_dirs.append(path)
    read_files = [p for p in ("/etc/ld.so.cache", "/etc/localtime", "/dev/urandom", "/dev/random",
                              "/dev/zero") if os.path.exists(p)]
    return SandboxPaths(read_dirs=read_dirs, read_files=read_files, rw_files=["/dev/null"], exposed=exposed)


def children_of_self() -> list[int]:
    """Direct children (including zombies) of this single-threaded process."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                data = fh.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: parse after the last ')'.
        rest = data[data.rfind(")") + 2:].split()
        if len(rest) > 1 and int(rest[1]) == pid:
            found.append(int(entry))
    return found


def reap() -> list[tuple[int, int]]:
    """Collect every exited child without blocking; (pid, status) pairs."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        done.append((pid, status))
    return done


def kill_descendants(spare: set[int] | frozenset[int] = frozenset(), rounds: int = 60,
                     reaped: list[tuple[int, int]] | None = None) -> int:
    """SIGKILL every child (and its process group) except ``spare``; bounded in rounds and time.

    Because we are a subreaper, killing a process re-parents its own children to us, so repeating
    until nothing is left also ends grandchildren and detached daemons.  Exit statuses collected
    on the way are appended to ``reaped``.  Returns how many processes were killed.
    """
    collected = reaped if reaped is not None else []
    killed = 0
    own_group = os.getpgid(0)
    deadline = time.monotonic() + 3.0
    for attempt in range(rounds):
        collected += reap()
        victims = [p for p in children_of_self() if p not in spare]
        if not victims or time.monotonic() > deadline:
            break
        for pid in victims:
            with contextlib.suppress(OSError):
                group = os.getpgid(pid)
                if group not in (own_group, 0):
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(min(0.001 * (2 ** attempt), 0.05))
    collected += reap()
    return killed


def remove_tree(path: str) -> None:
    """Delete a run directory that student code may have made hard to delete.

    Only directories are ever chmod-ed, after an lstat, so a symlink planted by the student never
    makes us touch a file outside the run directory; rmtree itself never follows symlinks.
    """

    def fix(_func: Any, failed: str, _exc: Any) -> None:
        # Make the entry and its parent traversable again; the next pass removes them.
        for target in (os.path.dirname(failed), failed):
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(target).st_mode):
                    os.chmod(target, 0o700)

    for _ in range(5):
        if not os.path.lexists(path):
            return
        shutil.rmtree(path, onerror=fix)


def dir_usage(path: str, max_entries: int = 20000) -> tuple[int, int]:
    """(bytes allocated, entries) below ``path`` without following links; stops at max_entries."""
    total = 0
    entries = 0
    stack = [path]
    while stack and entries < max_entries:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total, entries


# -- the child -------------------------------------------------------------------------------

def enter_sandbox(cfg: ZygoteConfig, limits: Limits, run_dir: str) -> None:
    """Apply every layer, in an order where each step is still allowed by the previous ones."""
    prctl.set_no_new_privs()
    if cfg.ipc_namespace:
        # First: the seccomp filter forbids creating namespaces.
        namespaces.unshare_ipc()
    if cfg.landlock_abi > 0:
        landlock.restrict_with(cfg.landlock_abi, cfg.landlock_rules, [run_dir])
    elif cfg.require_landlock:
        raise RuntimeError("Landlock is required but not available")
    apply_rlimits(limits)
    if cfg.seccomp_filter is not None and cfg.landlock_abi >= 6:
        # Landlock already confines signals to the sandbox: the precompiled filter will do.
        cfg.seccomp_filter.load()
    elif cfg.seccomp_filter is not None:
        # Without Landlock signal scoping, the filter itself must also protect this run's
        # supervisor, whose pid is only known now (building it costs a few milliseconds).
        seccomp.install([*cfg.protected_pids, os.getppid()], deny_path_truncate=cfg.landlock_abi < 3)
    elif cfg.require_seccomp:
        raise RuntimeError("seccomp is required but not available")


def prepare_child(cfg: ZygoteConfig, limits: Limits, run_dir: str, fds: tuple[int, int, int]) -> None:
    """Everything between fork and the harness."""
    os.setsid()
    prctl.set_parent_death_signal(signal.SIGKILL)
    out_w, err_w, res_w = fds
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(res_w, 3)
    enter_sandbox(cfg, limits, run_dir)
    # Only stdio and the results channel survive: not the zygote's control socket, not the
    # supervisor's connection to the daemon, not the Landlock rule fds.
    os.closerange(4, 1 << 20)
    os.chdir(run_dir)
    os.umask(0o077)
    os.environ.clear()
    os.environ.update(CHILD_ENV)
    os.environ["HOME"] = run_dir
    os.environ["TMPDIR"] = os.path.join(run_dir, "tmp")
    tempfile.tempdir = None
    # EFBIG as an exception is clearer to students than death by SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        os.nice(10)  # the daemon keeps priority when a run burns CPU
    sys.path[:0] = [""]


def child_main(cfg: ZygoteConfig, job: dict[str, Any], limits: Limits, run_dir: str,
               fds: tuple[int, int, int]) -> int:
    try:
        prepare_child(cfg, limits, run_dir, fds)
    except BaseException:
        with contextlib.suppress(Exception):
            os.write(2, ("sandbox setup failed: " + traceback.format_exc()).encode())
        return SETUP_FAILED_EXIT
    return harness.main(job, 3)


# -- the supervisor --------------------------------------------------------------------------

class Capture:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.seen = 0

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]


def classify(status: int, rusage: Any, limits: Limits, kill_reason: KillReason | None,
             results_present: bool) -> tuple[RunStatus, KillReason | None, int | None, int | None]:
    """(status, kill_reason, exit_code, signal) of a finished run; pure apart from its inputs."""
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    if kill_reason:
        return RunStatus.KILLED, kill_reason, exit_code, sig
    cpu = rusage.ru_utime + rusage.ru_stime
    if sig is not None and not results_present:
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds - 0.05):
            return RunStatus.KILLED, KillReason.CPU, exit_code, sig
        if sig == signal.SIGXFSZ:
            return RunStatus.KILLED, KillReason.FILE_SIZE, exit_code, sig
        if rusage.ru_maxrss * 1024 >= 0.8 * limits.memory_mb * 1024 * 1024:
            return RunStatus.KILLED, KillReason.MEMORY, exit_code, sig
        return RunStatus.KILLED, KillReason.SIGNAL, exit_code, sig
    if exit_code == SETUP_FAILED_EXIT and not results_present:
        return RunStatus.SETUP_FAILED, None, exit_code, sig
    if exit_code == 0:
        return RunStatus.OK, None, exit_code, sig
    return RunStatus.FAILED, None, exit_code, sig


def supervise(cfg: ZygoteConfig, conn_fd: int) -> int:
    conn = socket.socket(fileno=conn_fd)
    conn.settimeout(30)
    wire.send_frame(conn, {"pid": os.getpid()})
    request = wire.recv_frame(conn)
    started = time.monotonic()
    job = request["job"]
    limits = Limits.from_dict(request.get("limits") or {})
    problem = unusable_reason(cfg)
    run_dir = ""
    if problem is None:
        try:
            # The supervisor's pid in the name lets the zygote clean up after a supervisor that died.
            run_dir = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=cfg.scratch)
            os.mkdir(os.path.join(run_dir, "tmp"), 0o700)
        except OSError as exc:
            problem = f"scratch directory unusable: {exc.strerror or exc}"
    if problem is not None:
        # Nothing ran: the pool replaces this zygote and runs the job again in a fresh one.
        unusable: SupervisorReply = {"status": RunStatus.SANDBOX_ERROR, "unusable": problem}
        wire.send_frame(conn, dict(unusable))
        conn.close()
        return 0
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    child = os.fork()
    if child == 0:
        code = SETUP_FAILED_EXIT
        try:
            conn.detach()
            for fd in (out_r, err_r, res_r):
                os.close(fd)
            code = child_main(cfg, job, limits, run_dir, (out_w, err_w, res_w))
        finally:
            os._exit(code)
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    spawned = time.monotonic()
    output_cap = int(limits.output_kb) * 1024
    captures = {out_r: Capture(output_cap), err_r: Capture(output_cap), res_r: Capture(RESULTS_CAP)}
    kill_reason = collect(child, run_dir, limits, captures, captures[res_r], started)
    finished = time.monotonic()
    with contextlib.suppress(OSError):
        os.killpg(child, signal.SIGKILL)
    drain(captures)
    _, status, rusage = os.wait4(child, 0)
    leftovers = kill_descendants()
    for fd in captures:
        os.close(fd)
    try:
        # Common case: the run left nothing behind; two rmdir calls beat a full tree walk.
        os.rmdir(os.path.join(run_dir, "tmp"))
        os.rmdir(run_dir)
    except OSError:
        remove_tree(run_dir)
    results = captures[res_r]
    state, reason, exit_code, sig = classify(status, rusage, limits, kill_reason, bool(results.data))
    if results.seen > RESULTS_CAP and reason is None:
        state, reason = RunStatus.KILLED, KillReason.RESULTS_TOO_LARGE
    reply: SupervisorReply = {
        "status": state,
        "kill_reason": reason,
        "exit_code": exit_code,
        "signal": sig,
        "results": results.data.decode("utf-8", "replace") if results.data else None,
        "stdout": captures[out_r].data.decode("utf-8", "replace"),
        "stderr": captures[err_r].data.decode("utf-8", "replace"),
        "stdout_bytes": captures[out_r].seen,
        "stderr_bytes": captures[err_r].seen,
        "cpu_seconds": round(rusage.ru_utime + rusage.ru_stime, 4),
        "wall_seconds": round(finished - spawned, 4),
        "max_rss_kb": rusage.ru_maxrss,
        "leftovers_killed": leftovers,
        "setup_ms": round((spawned - started) * 1000, 3),
        "cleanup_ms": round((time.monotonic() - finished) * 1000, 3),
    }
    wire.send_frame(conn, dict(reply))
    conn.close()
    return 0


def unusable_reason(cfg: ZygoteConfig) -> str | None:
    """Why runs forked from this zygote would not get the sandbox they are owed, if they would not.

    Another process of our uid may have lowered the zygote's limits or raised its nice value
    (the seccomp filter forbids it to student code, but not everything has one):
    every supervisor inherits that state, so it is checked here, before any student code runs.
    """
    if cfg.baseline:
        changed = procstate.differences(cfg.baseline, procstate.snapshot())
        if changed:
            return "zygote state changed: " + ", ".join(changed)
    return None


def collect(child: int, run_dir: str, limits: Limits, captures: dict[int, Capture], results: Capture,
            started: float) -> KillReason | None:
    """Read the run's pipes until it exits or breaks a limit; returns the kill reason if any."""
    poller = select.poll()
    for fd in captures:
        poller.register(fd, select.POLLIN)
    pidfd = -1
    try:
        pidfd = os.pidfd_open(child)
        poller.register(pidfd, select.POLLIN)
    except (OSError, AttributeError):
        pidfd = -1
    deadline = started + float(limits.wall_seconds)
    disk_cap = int(limits.disk_kb) * 1024
    # Output beyond the cap is read and discarded (the run still gets graded); only a flood far
    # beyond any plausible program output is stopped, to spare the CPU spent discarding it.
    output_ceiling = max(256 * 1024 * 1024, 64 * int(limits.output_kb) * 1024)
    next_disk = time.monotonic() + 0.1
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                return KillReason.WALL
            timeout = max(0.0, min(deadline, next_disk) - now)
            if pidfd < 0:
                timeout = min(timeout, 0.02)
            for fd, _event in poller.poll(timeout * 1000):
                if fd == pidfd:
                    return None
                data = os.read(fd, 65536)
                if data:
                    captures[fd].add(data)
                else:
                    poller.unregister(fd)
            if sum(c.seen for c in captures.values() if c is not results) > output_ceiling:
                return KillReason.OUTPUT
            if results.seen > RESULTS_CAP:
                return KillReason.RESULTS_TOO_LARGE
            if pidfd < 0 and os.waitid(os.P_PID, child, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return None
            if time.monotonic() >= next_disk:
                used, entries = dir_usage(run_dir)
                if used > disk_cap or entries >= 20000:
                    return KillReason.DISK
                # Often enough that a fast writer overshoots the quota by tens of MiB at most
                # (size the scratch volume with that headroom per slot).
                next_disk = time.monotonic() + 0.1
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def drain(captures: dict[int, Capture], budget: int = 4 * 1024 * 1024) -> None:
    """Read what is left in the pipes without blocking (writers may be dead or detached)."""
    for fd, capture in captures.items():
        os.set_blocking(fd, False)
        taken = 0
        while taken < budget:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                break
            if not data:
                break
            taken += len(data)
            capture.add(data)


# -- the zygote ------------------------------------------------------------------------------

def probe(cfg: ZygoteConfig) -> dict[str, Any]:
    """Apply the real sandbox in a throwaway child and check that it actually blocks things."""
    run_dir = tempfile.mkdtemp(prefix="probe-", dir=cfg.scratch)
    read_fd, write_fd = os.pipe()
    own_ipc = _ipc_namespace_id()
    pid = os.fork()
    if pid == 0:
        report: dict[str, Any] = {}
        try:
            os.close(read_fd)
            os.chdir(run_dir)
            enter_sandbox(cfg, Limits(), run_dir)
            report["setup"] = "ok"
            report["network"] = _probe_network()
            try:
                os.listdir(cfg.scratch)
                report["scratch_hidden"] = False
            except OSError:
                report["scratch_hidden"] = True
            report["denied"] = _probe_denials(run_dir)
            report["own_ipc_namespace"] = own_ipc is not None and _ipc_namespace_id() not in (None, own_ipc)
        except BaseException as exc:
            report["setup"] = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            os.write(write_fd, json.dumps(report).encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    os.waitpid(pid, 0)
    remove_tree(run_dir)
    try:
        parsed = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"setup": "unreadable probe report"}


def _probe_network() -> str:
    """'socket-denied' (seccomp), 'connect-denied' (Landlock TCP), or 'open' (nothing blocks)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except PermissionError:
        return "socket-denied"
    try:
        # Port 1 on loopback has no listener: "refused" proves the attempt left the sandbox.
        sock.connect(("127.0.0.1", 1))
        return "open"
    except PermissionError:
        return "connect-denied"
    except OSError:
        return "open"
    finally:
        sock.close()


def _denied(call: Any) -> bool:
    """True when ``call`` fails with EPERM (what the seccomp filter answers)."""
    try:
        call()
    except PermissionError:
        return True
    except OSError:
        return False
    return False


def _try_datagram_socketpair() -> None:
    for sock in socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM):
        sock.close()


def _try_shared_memory() -> None:
    """Create (and at once remove) a SysV shared memory segment."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_private, ipc_creat, ipc_rmid = 0, 0o1000, 0
    segment = libc.shmget(ipc_private, 4096, ipc_creat | 0o600)
    if segment == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    libc.shmctl(segment, ipc_rmid, None)


def _probe_denials(run_dir: str) -> dict[str, bool]:
    """Each class of same-uid interference, tried harmlessly from inside the sandbox.

    Every attempt would change nothing even if it succeeded: the zygote's nice value and limits
    are set to what they already are, the probe's own directory keeps its mode.
    """
    parent = os.getppid()
    nice = os.getpriority(os.PRIO_PROCESS, parent)
    return {
        "unix_socket": _denied(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()),
        "netlink_socket": _denied(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
        "datagram_socketpair": _denied(_try_datagram_socketpair),
        "sysv_ipc": _denied(_try_shared_memory),
        # Reading only: the filter refuses any other pid, whether or not a new limit is given.
        "prlimit_other": _denied(lambda: resource.prlimit(parent, resource.RLIMIT_NOFILE)),
        "setpriority_other": _denied(lambda: os.setpriority(os.PRIO_PROCESS, parent, nice)),
        "chmod": _denied(lambda: os.chmod(run_dir, 0o700)),
        "utime": _denied(lambda: os.utime(run_dir)),
    }


def _ipc_namespace_id() -> int | None:
    try:
        return os.stat("/proc/self/ns/ipc").st_ino
    except OSError:
        return None


def preload(names: list[str]) -> list[str]:
    """Import the modules every run may need; returns the ones that failed."""
    sys.path.insert(0, LEGACY_DIR)
    failed = []
    for name in ["gradelib", "grader_support", "grader_support.gradelib", *DEFAULT_PRELOAD, *names]:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
    return failed


def _compile_seccomp(cfg: ZygoteConfig) -> None:
    cfg.seccomp_filter = None
    if seccomp.available() and "seccomp" not in cfg.disable:
        try:
            cfg.seccomp_filter = seccomp.compile_filter(cfg.protected_pids,
                                                        deny_path_truncate=cfg.landlock_abi < 3)
        except (OSError, RuntimeError, ValueError):
            cfg.seccomp_filter = None


def detect_features(cfg: ZygoteConfig) -> dict[str, Any]:
    cfg.landlock_abi = 0 if "landlock" in cfg.disable else landlock.abi_version()
    if cfg.landlock_abi > 0:
        cfg.landlock_rules = landlock.open_rules(
            cfg.landlock_abi, cfg.paths.read_dirs, cfg.paths.read_files, cfg.paths.rw_files
        )
    cfg.ipc_namespace = "ipc_namespace" not in cfg.disable and namespaces.ipc_namespace_available()
    _compile_seccomp(cfg)
    report = probe(cfg)
    # A kernel or container runtime that refuses one layer: keep the others.
    if report.get("setup") != "ok" and cfg.ipc_namespace:
        cfg.ipc_namespace = False
        report = probe(cfg)
    if report.get("setup") != "ok" and cfg.landlock_abi > 0:
        cfg.landlock_abi = 0
        _compile_seccomp(cfg)  # without Landlock's truncate right the filter covers truncate()
        report = probe(cfg)
    if report.get("setup") != "ok" and cfg.seccomp_filter is not None:
        cfg.seccomp_filter = None
        report = probe(cfg)
    working = report.get("setup") == "ok"
    if cfg.seccomp_filter is not None and report.get("network") != "socket-denied":
        cfg.seccomp_filter = None
    cfg.seccomp_ok = cfg.seccomp_filter is not None and working
    if not working:
        cfg.landlock_abi = 0
        cfg.ipc_namespace = False
    denied = report.get("denied") if cfg.seccomp_ok else {}
    return {
        "seccomp": cfg.seccomp_ok,
        # Each class the filter is meant to close, proven by an attempt in the probe.
        "seccomp_denies": denied or {},
        "landlock_abi": cfg.landlock_abi,
        "landlock": cfg.landlock_abi > 0 and bool(report.get("scratch_hidden")),
        "landlock_signal_scope": cfg.landlock_abi >= 6,
        "landlock_truncate": cfg.landlock_abi >= 3,
        "ipc_namespace": cfg.ipc_namespace and bool(report.get("own_ipc_namespace")),
        "network": report.get("network", "open"),
        "rlimits": True,
        "no_new_privs": working,
        "capabilities": _effective_capabilities(),
        "read_only_root": _read_only("/"),
        "probe": report,
        "exposed_paths": cfg.paths.exposed,
        "uid": os.getuid(),
        "pid": os.getpid(),
    }


def _effective_capabilities() -> str:
    """The zygote's effective capability mask (hex) as the kernel reports it; "0" means none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return format(int(line.split()[1], 16), "x")
    except (OSError, ValueError):
        pass
    return "unknown"


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def serve(cfg: ZygoteConfig, ctl: socket.socket) -> None:
    supervisors: set[int] = set()
    ctl.settimeout(1.0)
    last_sweep = time.monotonic()
    while True:
        try:
            msg, ancdata, _flags, _addr = ctl.recvmsg(64, socket.CMSG_SPACE(16 * array.array("i").itemsize))
        except TimeoutError:
            msg, ancdata = b"", None
        if ancdata is None:
            pass
        elif not msg and not ancdata:
            break  # the daemon closed its end: shut down
        else:
            for fd in _received_fds(ancdata):
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        os.close(ctl.detach())
                        code = supervise(cfg, fd)
                    except BaseException:
                        with contextlib.suppress(Exception):
                            sys.stderr.write(traceback.format_exc())
                    finally:
                        os._exit(code)
                os.close(fd)
                supervisors.add(pid)
        exits = reap()
        if time.monotonic() - last_sweep >= 1.0:
            # Processes re-parented to us are leftovers of a supervisor that died abnormally.
            kill_descendants(spare=frozenset(supervisors), rounds=5, reaped=exits)
            last_sweep = time.monotonic()
        for pid, status in exits:
            if pid not in supervisors:
                continue
            supervisors.discard(pid)
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                # A supervisor that did not finish normally left its run directory behind.
                with contextlib.suppress(OSError):
                    for name in os.listdir(cfg.scratch):
                        if name.startswith(f"run-{pid}-"):
                            remove_tree(os.path.join(cfg.scratch, name))
    # Shutdown: the supervisors and everything below them go with us.
    kill_descendants(rounds=100)


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


def main(argv: list[str] | None = None) -> None:
    args = json.loads((argv or sys.argv)[1])
    daemon_pid = int(args["daemon_pid"])
    me = os.getpid()
    cfg = ZygoteConfig(
        ctl_fd=int(args["ctl_fd"]),
        scratch=args["scratch"],
        protected_pids=[daemon_pid, -int(args["daemon_pgid"]), me, -os.getpgid(0)],
        hidden_paths=list(args["hidden_paths"]),
        preload=list(args.get("preload") or []),
        require_seccomp=bool(args.get("require_seccomp")),
        require_landlock=bool(args.get("require_landlock")),
        disable=tuple(args.get("disable") or ()),
    )
    ctl = socket.socket(fileno=cfg.ctl_fd)
    # Prefer our processes when the container runs out of memory: student runs inherit this.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as fh:
        fh.write("1000")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    failed = preload(cfg.preload)
    cfg.paths = compute_paths(cfg.hidden_paths)
    drop_to = args.get("drop_to")
    if drop_to:
        # Started as root: become the unprivileged sandbox user for good (real, effective and
        # saved ids, no supplementary groups) before anything else happens.
        uid, gid = int(drop_to[0]), int(drop_to[1])
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    # Both settings below are reset by a credential change, hence after the drop.
    prctl.set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != daemon_pid:
        return  # the daemon died before we could arm the parent-death signal
    prctl.set_dumpable(False)
    prctl.set_child_subreaper()
    features = detect_features(cfg)
    features["preload_failed"] = failed
    cfg.baseline = procstate.snapshot()
    ctl.sendall(json.dumps({"ready": True, "features": features}).encode())
    # Objects allocated so far are never collected, so forked runs do not copy their pages
    # just because the garbage collector touched them.
    gc.collect()
    gc.freeze()
    serve(cfg, ctl)


if __name__ == "__main__":
    main()
