"""The daemon's side of the sandbox: starts the zygote and runs jobs through it (asyncio)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import xqueue_grader
from xqueue_grader.jobs import Job, ScriptJob, job_to_json
from xqueue_grader.sandbox import wire
from xqueue_grader.sandbox.limits import Limits
from xqueue_grader.sandbox.runs import SANDBOX_FAILURES, RunResult, RunStatus, run_result_from_reply
from xqueue_grader.sandbox.zygote import remove_tree

log = logging.getLogger("xqueue_grader.sandbox")

# Without privileges we cannot change uid; when started as root (developer machines, some CI) we
# never run student code as root but as this uid ("nobody").
DEFAULT_SANDBOX_UID = 65534


class SandboxUnavailable(RuntimeError):
    """The zygote cannot be started (or the required isolation features are missing)."""


@dataclass
class SandboxSettings:
    scratch_root: str | None = None
    # Paths student code must not read (the grader root); checked against what the sandbox allows.
    hidden_paths: list[str] = field(default_factory=list)
    preload: list[str] = field(default_factory=list)
    sandbox_uid: int = DEFAULT_SANDBOX_UID
    sandbox_gid: int | None = None
    require_seccomp: bool = False
    require_landlock: bool = False
    max_restarts_per_minute: int = 5
    start_timeout: float = 60.0
    # Layers to leave off ("landlock", "seccomp", "ipc_namespace"): only for tests proving each
    # layer on its own.
    disable: tuple[str, ...] = ()


# The self-test: the smallest job that needs every part of the machinery (supervisor, run
# directory, sandboxed child, output capture).
SELF_TEST_JOB = ScriptJob(code="print('self-test ok')")
SELF_TEST_OUTPUT = "self-test ok\n"
SELF_TEST_LIMITS = Limits(cpu_seconds=5, wall_seconds=10)


class SandboxPool:
    """Runs jobs in sandboxed children forked by one zygote; safe for concurrent ``run`` calls."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.settings = settings or SandboxSettings()
        self.features: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl: socket.socket | None = None
        self._scratch: str | None = None
        self._restarts: deque[float] = deque()
        self._start_lock = asyncio.Lock()
        self._closed = False
        # Health as seen by the runs: when the sandbox last worked, since when it has not.
        self.last_success: float | None = None
        self.failing_since: float | None = None
        self.last_problem: str | None = None
        self.replacements = 0
        self._check_task: asyncio.Task[bool] | None = None

    @property
    def healthy(self) -> bool:
        return not self._closed and self._proc is not None and self._proc.poll() is None

    @property
    def broken(self) -> bool:
        """Down and out of restarts for now: the process should be restarted from outside."""
        if self.healthy or self._closed:
            return False
        now = time.monotonic()
        recent = [t for t in self._restarts if now - t <= 60]
        return len(recent) >= self.settings.max_restarts_per_minute

    @property
    def zygote_pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def scratch(self) -> str | None:
        return self._scratch

    @property
    def usable(self) -> bool:
        """Running, and the last run or self-test did not fail for reasons of the sandbox."""
        return self.healthy and self.failing_since is None

    def _record(self, ok: bool, problem: str | None = None) -> None:
        now = time.monotonic()
        if ok:
            self.last_success = now
            self.failing_since = None
            self.last_problem = None
        else:
            if self.failing_since is None:
                self.failing_since = now
            self.last_problem = problem

    async def start(self) -> dict[str, Any]:
        async with self._start_lock:
            if not self.healthy:
                await self._spawn()
        return self.features

    async def _spawn(self) -> None:
        self._discard_zygote()
        # Every zygote gets a fresh scratch directory: whatever happened to the previous one
        # (permissions changed, filled up, left-overs) cannot reach the runs of the new one.
        self._drop_scratch()
        settings = self.settings
        run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            uid = settings.sandbox_uid
            if uid == 0:
                raise SandboxUnavailable("refusing to run student code as root (sandbox_uid is 0)")
            run_as = (uid, settings.sandbox_gid if settings.sandbox_gid is not None else uid)
        try:
            self._proc, parent_sock = self._start_process(run_as)
        except OSError as exc:
            raise SandboxUnavailable(f"sandbox zygote cannot be started: {exc!r}") from exc
        parent_sock.setblocking(False)
        self._ctl = parent_sock
        loop = asyncio.get_running_loop()
        try:
            raw = await asyncio.wait_for(loop.sock_recv(parent_sock, 1 << 20), settings.start_timeout)
            message = json.loads(raw.decode()) if raw else {}
        except (TimeoutError, ValueError, OSError) as exc:
            self._discard_zygote()
            raise SandboxUnavailable(f"sandbox zygote did not start: {exc!r}") from exc
        if not message.get("ready"):
            self._discard_zygote()
            raise SandboxUnavailable("sandbox zygote exited during start-up")
        self.features = dict(message.get("features") or {})
        if settings.require_seccomp and not self.features.get("seccomp"):
            self._discard_zygote()
            raise SandboxUnavailable("seccomp is required but not available")
        if settings.require_landlock and not self.features.get("landlock"):
            self._discard_zygote()
            raise SandboxUnavailable("Landlock is required but not available")

    def _start_process(self, run_as: tuple[int, int] | None) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """Fork+exec the zygote (blocking for a few milliseconds, on purpose in the loop thread:
        the zygote's parent-death signal is tied to the thread that forked it)."""
        settings = self.settings
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="xqgrader-", dir=settings.scratch_root)
            if run_as:
                # Owned by root, writable for the sandbox's group: supervisors create run
                # directories in it, but no process of the sandbox uid can chmod or chown it.
                os.chown(self._scratch, 0, run_as[1])
                os.chmod(self._scratch, 0o770)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = {
            "ctl_fd": child_sock.fileno(),
            "scratch": self._scratch,
            "daemon_pid": os.getpid(),
            "daemon_pgid": os.getpgid(0),
            "hidden_paths": [self._scratch, *[os.path.realpath(p) for p in settings.hidden_paths]],
            "preload": list(settings.preload),
            "require_seccomp": settings.require_seccomp,
            "require_landlock": settings.require_landlock,
            "disable": list(settings.disable),
            # As root, the zygote starts as root (the interpreter may live somewhere only root
            # can read) and drops to this uid itself once everything it needs is imported.
            "drop_to": list(run_as) if run_as else None,
        }
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(xqueue_grader.__file__)))
        # -I: no environment variables, no user site, no current directory on sys.path; the
        # package location is passed explicitly so this works for any installation method.
        code = (
            "import sys; sys.path.insert(0, sys.argv[2]); "
            "from xqueue_grader.sandbox.zygote import main; main(sys.argv)"
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", code, json.dumps(args), package_parent],
                pass_fds=(child_sock.fileno(),),
                env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        except OSError:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        return proc, parent_sock

    def _discard_zygote(self) -> None:
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.close()
            self._ctl = None
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
        self._proc = None

    def _drop_scratch(self) -> None:
        if self._scratch is None:
            return
        remove_tree(self._scratch)
        if os.path.lexists(self._scratch):
            log.error("could not remove an old scratch directory", extra={"fields": {"path": self._scratch}})
        self._scratch = None

    def _count_restart(self, what: str) -> None:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > 60:
            self._restarts.popleft()
        if len(self._restarts) >= self.settings.max_restarts_per_minute:
            raise SandboxUnavailable(f"sandbox zygote {what}; not restarting it again this minute")
        self._restarts.append(now)

    async def _ensure_running(self) -> None:
        if self.healthy:
            return
        if self._closed:
            raise SandboxUnavailable("sandbox pool is closed")
        async with self._start_lock:
            # Runs waiting here while another one restarts or replaces the zygote find it
            # running afterwards: only a real restart counts against the budget.
            if self.healthy:
                return
            self._count_restart("keeps dying")
            log.warning("sandbox zygote is not running; starting it again")
            await self._spawn()

    async def replace(self, reason: str, only_if: int | None = None) -> None:
        """Throw the zygote and its scratch directory away and start afresh (bounded per minute).

        ``only_if``: the zygote found broken; when another caller has replaced it meanwhile,
        nothing is done (concurrent runs that met the same broken zygote replace it once).
        """
        if self._closed:
            raise SandboxUnavailable("sandbox pool is closed")
        async with self._start_lock:
            if only_if is not None and self.healthy and self.zygote_pid != only_if:
                return
            self._count_restart("keeps breaking")
            self.replacements += 1
            log.warning("replacing the sandbox zygote", extra={"fields": {"reason": reason[:300]}})
            await self._spawn()

    async def _send_fd(self, fd: int) -> None:
        """Hand one end of a run's socketpair to the zygote (bounded retries on a full buffer)."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        for _ in range(2000):
            ctl = self._ctl
            if ctl is None:
                raise BrokenPipeError("no zygote")
            try:
                ctl.sendmsg([b"R"], ancillary)
                return
            except BlockingIOError:
                await asyncio.sleep(0.001)
        raise BrokenPipeError("zygote does not accept work")

    async def run(self, job: Job, limits: Limits) -> RunResult:
        """Run one job; never raises for anything the job does (only for a broken pool)."""
        try:
            result = await self._run_once(job, limits)
            if result.unusable:
                # The zygote refused before running anything: replace it, then run the job
                # once more, so this submission is graded as if nothing had happened.
                await self.replace(result.unusable, only_if=result.zygote_pid)
                result = await self._run_once(job, limits)
                if result.unusable:
                    # A fresh zygote refuses too: no answer beats a wrong one (the server
                    # offers the submission again, perhaps to a healthy pod).
                    raise SandboxUnavailable(f"a fresh sandbox zygote is unusable too: {result.unusable}")
            elif result.status == RunStatus.SANDBOX_ERROR and result.zygote_pid != self.zygote_pid:
                # Another run found this run's zygote broken and replaced it meanwhile, which
                # ended this run too: run it again in the fresh zygote.
                result = await self._run_once(job, limits)
        except SandboxUnavailable as exc:
            self._record(False, str(exc))
            raise
        if result.status in SANDBOX_FAILURES or result.unusable:
            self._record(False, result.detail or result.status)
            self._check_soon()
        else:
            self._record(True)
        return result

    async def self_test(self) -> bool:
        """Run the self-test job; on failure replace the zygote and try once more.

        Returns whether the sandbox works now (and records it for health reporting).
        """
        for attempt in range(2):
            try:
                result = await self._run_once(SELF_TEST_JOB, SELF_TEST_LIMITS)
            except SandboxUnavailable as exc:
                self._record(False, str(exc))
                return False
            if result.status == RunStatus.OK and result.stdout == SELF_TEST_OUTPUT:
                self._record(True)
                return True
            problem = result.unusable or result.detail or f"self-test ended {result.status}"
            self._record(False, problem)
            if attempt == 0:
                try:
                    await self.replace(problem, only_if=result.zygote_pid)
                except SandboxUnavailable as exc:
                    self._record(False, str(exc))
                    return False
        return False

    def _check_soon(self) -> None:
        """After a run failed for reasons of the sandbox, find out (in the background) whether
        the next one would too, and repair the pool if so."""
        if self._closed or (self._check_task is not None and not self._check_task.done()):
            return
        self._check_task = asyncio.get_running_loop().create_task(self.self_test())

    async def _run_once(self, job: Job, limits: Limits) -> RunResult:
        started = time.monotonic()
        await self._ensure_running()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                await self._send_fd(theirs.fileno())
            except OSError:
                # The zygote died between the health check and the send: one restart, one retry.
                self._discard_zygote()
                await self._ensure_running()
                await self._send_fd(theirs.fileno())
        except OSError as exc:
            ours.close()
            return RunResult(status=RunStatus.SANDBOX_ERROR, detail=f"cannot reach the zygote: {exc!r}",
                             zygote_pid=self.zygote_pid)
        finally:
            theirs.close()
        zygote = self.zygote_pid
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        supervisor_pid = None
        try:
            hello = await asyncio.wait_for(_read_frame(reader), 15)
            supervisor_pid = int(hello["pid"])
            writer.write(wire.encode({"job": job_to_json(job), "limits": limits.to_dict()}))
            await writer.drain()
            reply = await asyncio.wait_for(_read_frame(reader), float(limits.wall_seconds) + 20)
        except (TimeoutError, EOFError, asyncio.IncompleteReadError, ConnectionError, ValueError,
                KeyError, TypeError) as exc:
            if supervisor_pid:
                # Its children are in their own groups; the zygote's sweep catches them.
                with contextlib.suppress(OSError):
                    os.kill(supervisor_pid, signal.SIGKILL)
            return RunResult(
                status=RunStatus.SANDBOX_ERROR,
                detail=f"supervisor failed: {exc!r}",
                total_ms=(time.monotonic() - started) * 1000,
                zygote_pid=zygote,
            )
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return run_result_from_reply(reply, (time.monotonic() - started) * 1000, zygote)

    async def close(self) -> None:
        self._closed = True
        if self._check_task is not None and not self._check_task.done():
            self._check_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._check_task
        proc = self._proc
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.close()
            self._ctl = None
        if proc is not None:
            # EOF on the control socket makes the zygote kill everything below it and exit.
            for _ in range(100):
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._proc = None
        if self._scratch:
            remove_tree(self._scratch)
            self._scratch = None


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    length = wire.decode_length(await reader.readexactly(wire.HEADER.size))
    return wire.decode(await reader.readexactly(length))
