"""The two ways the grader runs, as targets for the abuse suite.

* ``root``: the tests' own process is the daemon (root); student code runs as the session's
  sandbox uid; course files belong to root.
* ``same_uid``: as in a Pod Security "restricted" pod: the daemon (``engine_host.py``, or the real
  ``xqueue-grader run``), the zygote and student code all run as one unprivileged uid without
  capabilities, and the course files belong to that uid.

Both offer the same calls, so every abuse case runs unchanged in both modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xqueue_grader
from xqueue_grader.engine import GradingEngine
from xqueue_grader.fetch import seal, unseal
from xqueue_grader.results import GradeResult
from xqueue_grader.sandbox import Limits, SandboxPool

from . import as_user
from .helpers import (
    ABUSE_COURSE,
    EXAMPLES,
    SECRET_ENV_VALUE,
    SESSION_UID,
    TEST_LIMITS,
    free_port,
    lms_body,
    sandbox_settings,
    wait_until,
)

HERE = Path(__file__).resolve().parent
# Child processes import the very package these tests import (not whatever is installed).
PACKAGE_PARENT = str(Path(xqueue_grader.__file__).resolve().parents[1])
# Daemon, zygote and student code of the same-uid mode; per session, like SESSION_UID, so that
# RLIMIT_NPROC (counted per uid) never couples concurrent test sessions.
SAME_UID = 70000 + os.getpid() % 3000
MODES = ("root", "same_uid")


def chown_tree(path: str, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


class SameUidArea:
    """A root-owned folder holding course copies owned by the uid (as a pod's course volume after
    ``fetch-course``) and a scratch root like an emptyDir."""

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.base = tempfile.mkdtemp(prefix="xqgrader-sameuid-")
        os.chmod(self.base, 0o755)
        self.courses = {"abuse": os.path.join(self.base, "abuse"), "examples": os.path.join(self.base, "examples")}
        shutil.copytree(ABUSE_COURSE, self.courses["abuse"], ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(EXAMPLES, self.courses["examples"], ignore=shutil.ignore_patterns("__pycache__"))
        for root in self.courses.values():
            chown_tree(root, uid, uid)
            seal(root)  # as ``fetch-course`` leaves a course
        self.scratch_root = os.path.join(self.base, "scratch")
        os.mkdir(self.scratch_root)
        os.chmod(self.scratch_root, 0o777)

    def remove(self) -> None:
        for root in self.courses.values():
            unseal(root)
        shutil.rmtree(self.base, ignore_errors=True)


class LocalTarget:
    """Root mode: an in-process pool of the test process."""

    mode = "root"

    def __init__(self, limits: Limits = TEST_LIMITS, disable: tuple[str, ...] = ()) -> None:
        self.uid = SESSION_UID if os.geteuid() == 0 else os.geteuid()
        self.daemon_pid = os.getpid()
        self.courses = {"abuse": ABUSE_COURSE, "examples": EXAMPLES}
        self.pool = SandboxPool(sandbox_settings(disable=disable))
        self.engines = {name: GradingEngine(self.pool, root, limits) for name, root in self.courses.items()}

    async def start(self) -> LocalTarget:
        await self.pool.start()
        return self

    async def grade(self, course: str, grader: str, code: str) -> GradeResult:
        return await self.engines[course].grade_body(lms_body(grader, code))

    async def self_test(self) -> bool:
        return await self.pool.self_test()

    async def info(self) -> dict[str, Any]:
        return {"pid": self.daemon_pid, "uid": self.uid, "zygote_pid": self.pool.zygote_pid,
                "scratch": self.pool.scratch, "healthy": self.pool.healthy, "usable": self.pool.usable,
                "replacements": self.pool.replacements, "features": self.pool.features}

    async def close(self) -> None:
        await self.pool.close()


class RemoteTarget:
    """Same-uid mode: ``engine_host.py`` as the unprivileged uid, driven over a pipe."""

    mode = "same_uid"

    def __init__(self, limits: Limits = TEST_LIMITS, disable: tuple[str, ...] = ()) -> None:
        self.uid = SAME_UID
        self.area = SameUidArea(self.uid)
        self.courses = dict(self.area.courses)
        self.spec = {"courses": self.courses, "scratch_root": self.area.scratch_root,
                     "limits": limits.to_dict(), "disable": list(disable)}
        self.proc: asyncio.subprocess.Process | None = None
        self.daemon_pid = -1
        self._next = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.log_path = os.path.join(self.area.base, "host.log")

    async def start(self) -> RemoteTarget:
        argv = as_user.command(self.uid, self.uid, [sys.executable, str(HERE / "engine_host.py"),
                                                    json.dumps(self.spec)])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": PACKAGE_PARENT,
               "XQGRADER_TEST_SECRET": SECRET_ENV_VALUE}
        log = open(self.log_path, "wb")  # noqa: ASYNC230 - a local file, opened once
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env, cwd="/",
                limit=64 * 1024 * 1024)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("engine host did not start; see " + self.log_path)
        self.daemon_pid = int(json.loads(line)["pid"])
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            reply = json.loads(line)
            future = self._waiting.pop(reply.get("id"), None)
            if future is not None and not future.done():
                future.set_result(reply)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(EOFError("engine host exited"))

    async def call(self, **request: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        self.proc.stdin.write((json.dumps({"id": self._next, **request}) + "\n").encode())
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    async def grade(self, course: str, grader: str, code: str) -> GradeResult:
        data = (await self.call(op="grade", course=course, body=lms_body(grader, code)))["result"]
        return GradeResult(correct=data["correct"], score=data["score"],
                           tests=[tuple(row) for row in data["tests"]], errors=list(data["errors"]))

    async def self_test(self) -> bool:
        return bool((await self.call(op="self_test"))["ok"])

    async def info(self) -> dict[str, Any]:
        return await self.call(op="info")

    async def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self.area.remove()


async def start_target(mode: str, **kwargs: Any) -> LocalTarget | RemoteTarget:
    target: LocalTarget | RemoteTarget = LocalTarget(**kwargs) if mode == "root" else RemoteTarget(**kwargs)
    return await target.start()


class DaemonProcess:
    """The real ``xqueue-grader run`` against an XQueue server: as root with student code under
    the session's sandbox uid (root mode), or wholly as the unprivileged uid (same-uid mode)."""

    def __init__(self, mode: str, server_url: str, queue: str, username: str, password: str,
                 **settings: Any) -> None:
        self.mode = mode
        if mode == "root":
            self.area: SameUidArea | None = None
            self.base = tempfile.mkdtemp(prefix="xqgrader-daemon-")
            os.chmod(self.base, 0o755)
            self.grader_root = ABUSE_COURSE
            self.scratch_root = os.path.join(self.base, "scratch")
            os.mkdir(self.scratch_root)
        else:
            self.area = SameUidArea(SAME_UID)
            self.base = self.area.base
            self.grader_root = self.area.courses["abuse"]
            self.scratch_root = self.area.scratch_root
        self.port = free_port()
        self.log_path = os.path.join(self.base, "daemon.log")
        config = {"http_host": "127.0.0.1", "sandbox_uid": SESSION_UID, "long_poll_seconds": 0,
                  "poll_min_seconds": 0.1, "poll_max_seconds": 0.3, "scratch_dir": self.scratch_root,
                  "limits": {"wall_seconds": 4, "cpu_seconds": 2}, **settings}
        config_path = os.path.join(self.base, "grader.yaml")
        Path(config_path).write_text(json.dumps(config))  # JSON is YAML
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": PACKAGE_PARENT, "XQGRADER_SERVER_URL": server_url, "XQGRADER_QUEUE": queue,
            "XQGRADER_USERNAME": username,
            "XQGRADER_PASSWORD": password, "XQGRADER_GRADER_ROOT": self.grader_root,
            "XQGRADER_HTTP_PORT": str(self.port), "XQGRADER_SLOTS": "2", "XQGRADER_DRAIN_SECONDS": "10",
            "XQGRADER_CONFIG_FILE": config_path,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        argv = [sys.executable, "-m", "xqueue_grader", "run"]
        if self.mode != "root":
            argv = as_user.command(SAME_UID, SAME_UID, argv)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=log, cwd="/")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def zygote_pid(self) -> int:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def scratch(self) -> str:
        (name,) = [n for n in os.listdir(self.scratch_root) if n.startswith("xqgrader-")]
        return os.path.join(self.scratch_root, name)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in Path(self.log_path).read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        import aiohttp

        client_timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=client_timeout) as session, \
                session.get(f"http://127.0.0.1:{self.port}{path}") as response:
            return response.status, await response.json(content_type=None)

    async def wait_status(self, path: str, status: int, seconds: float) -> dict[str, Any]:
        """Poll ``path`` until it answers ``status`` (bounded); returns that answer's body."""
        last: list[object] = [None]

        async def answered() -> tuple[dict[str, Any]] | None:
            assert self.proc is not None and self.proc.poll() is None, "the daemon exited"
            try:
                code, body = await self.get(path)
            except (TimeoutError, OSError) as exc:
                last[0] = exc
                return None
            last[0] = (code, body)
            return (body,) if code == status else None

        (body,) = await wait_until(answered, seconds, f"{path} to answer {status}", interval=0.2,
                                   detail=lambda: last[0])
        return body

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.area is not None:
            self.area.remove()
        else:
            shutil.rmtree(self.base, ignore_errors=True)


def as_uid(uid: int, call: Callable[[], Any]) -> Any:
    """``call()`` in a child process running as ``uid`` (gid the same), its result via JSON.

    Changing or even reading another uid's limits needs CAP_SYS_RESOURCE, which root in a
    container may lack; a process of the same uid needs nothing (that is the whole problem).
    """
    if uid == os.geteuid():
        return json.loads(json.dumps(call()))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            reply = {"value": call()}
        except BaseException as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            os.write(write_end, json.dumps(reply).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    reply = json.loads(data or b'{"error": "no reply"}')
    if "error" in reply:
        raise OSError(reply["error"])
    return reply["value"]


def uid_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}").st_uid


def prlimit(pid: int, res: int, new: tuple[int, int] | None = None) -> tuple[int, int]:
    """resource.prlimit on any process, from a process of its uid when that is needed."""
    if new is None:
        return tuple(as_uid(uid_of(pid), lambda: resource.prlimit(pid, res)))
    return tuple(as_uid(uid_of(pid), lambda: resource.prlimit(pid, res, new)))
