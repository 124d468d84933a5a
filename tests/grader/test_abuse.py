"""Sandbox abuse suite (anchors.md section 6.6): every case must end with a clear answer to the
student, leave nothing running, and the very same engine must grade the next submission normally.

The engine fixture is shared by the whole module on purpose: surviving one case is only proven by
grading correctly afterwards.  Limits are small (wall 3 s, CPU 2 s) to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import shutil
import socket
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xqueue_grader import results as R
from xqueue_grader.engine import GradingEngine
from xqueue_grader.results import GradeResult
from xqueue_grader.sandbox import SandboxPool

from .fake_xqueue import FakeXQueue
from .helpers import (
    ABUSE_COURSE,
    EXAMPLES,
    SECRET_ENV_VALUE,
    SESSION_UID,
    TEST_LIMITS,
    grade,
    lms_body,
    wait_until,
)
from .targets import MODES, DaemonProcess, LocalTarget, RemoteTarget, prlimit, start_target

PROBE = "probe/grade_probe.py"
ANSWER_SECRET = "ANSWER-SECRET-7f3c91"
SQUARE_OK = "def square(x):\n    return x * x\n"


@pytest.fixture(scope="module")
async def abuse_engine(sandbox_pool: SandboxPool) -> AsyncIterator[GradingEngine]:
    yield GradingEngine(sandbox_pool, ABUSE_COURSE, TEST_LIMITS)


@pytest.fixture(scope="module")
async def square_engine(sandbox_pool: SandboxPool) -> AsyncIterator[GradingEngine]:
    yield GradingEngine(sandbox_pool, EXAMPLES, TEST_LIMITS)


def attempt(body: str) -> str:
    """A submission whose ``attempt()`` runs ``body`` and returns what it observed."""
    return "def attempt():\n" + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"


def observed(result: GradeResult) -> str:
    """The student's output of the single probe test."""
    assert result.errors == [], result.errors
    (row,) = result.tests
    return row[4]


def sandbox_processes(exclude: set[int]) -> list[int]:
    """Live processes of the sandbox uid other than ``exclude`` (the zygote)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        state_line = next((line for line in status.splitlines() if line.startswith("State:")), "")
        if uid_line.split()[1:2] == [str(SESSION_UID)] and "Z" not in state_line.split()[1:2]:
            found.append(int(entry))
    return found


async def assert_no_leftovers(pool: SandboxPool) -> None:
    zygote = {pool.zygote_pid or -1}
    # Looked up at each call: the in-pod adapter replaces sandbox_processes in this module.
    await wait_until(lambda: not sandbox_processes(zygote), 5, "no sandbox process left running",
                     detail=lambda: f"processes left running: {sandbox_processes(zygote)}")


async def assert_still_serving(engine: GradingEngine, pool: SandboxPool) -> None:
    """The next, normal submission is graded normally by the same daemon machinery."""
    result = await grade(engine, "square/grade_square.py", SQUARE_OK)
    assert (result.correct, result.score, result.errors) == (True, 1.0, [])
    assert pool.healthy
    await assert_no_leftovers(pool)


# -- resource exhaustion -----------------------------------------------------------------------


async def test_fork_bomb_is_contained(square_engine: GradingEngine, sandbox_pool: SandboxPool) -> None:
    bomb = SQUARE_OK + "import os\nwhile True:\n    os.fork()\n"
    zygote_before = sandbox_pool.zygote_pid
    started = time.monotonic()
    bombed, concurrent = await asyncio.gather(
        grade(square_engine, "square/grade_square.py", bomb),
        grade(square_engine, "square/grade_square.py", SQUARE_OK),
    )
    assert time.monotonic() - started <= TEST_LIMITS.wall_seconds + 2
    assert bombed.score == 0 and bombed.errors
    text = "\n".join(bombed.errors)
    assert ("too many processes" in text) or ("took too long" in text) or ("processor time" in text), text
    assert concurrent.score == 1, "a concurrent submission must not be affected"
    assert sandbox_pool.zygote_pid == zygote_before
    await assert_still_serving(square_engine, sandbox_pool)


@pytest.mark.parametrize("bomb", [
    "x = b'x' * 10**10\n",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))\n",
])
async def test_memory_bomb_is_contained(square_engine: GradingEngine, sandbox_pool: SandboxPool, bomb: str) -> None:
    result = await grade(square_engine, "square/grade_square.py", SQUARE_OK + bomb)
    assert result.score == 0
    text = "\n".join(result.errors)
    assert "MemoryError" in text or "memory" in text, text
    assert "Your code used more memory than allowed (256 MiB)." in text
    await assert_still_serving(square_engine, sandbox_pool)


async def test_cpu_loop_is_stopped(square_engine: GradingEngine, sandbox_pool: SandboxPool) -> None:
    started = time.monotonic()
    result = await grade(square_engine, "square/grade_square.py", SQUARE_OK + "while True:\n    pass\n")
    elapsed = time.monotonic() - started
    (message,) = result.errors
    # On an idle core the CPU limit (2 s) fires first; on a busy machine the wall clock (3 s).
    assert message in (
        "Your code used too much processor time and was stopped after 2 seconds of CPU time.",
        "Your code took too long to run and was stopped after 3 seconds.",
    )
    assert elapsed <= TEST_LIMITS.wall_seconds + 2
    await assert_still_serving(square_engine, sandbox_pool)


async def test_sleep_forever_is_stopped_by_the_wall_clock(square_engine: GradingEngine,
                                                         sandbox_pool: SandboxPool) -> None:
    started = time.monotonic()
    result = await grade(square_engine, "square/grade_square.py", SQUARE_OK + "import time\ntime.sleep(10**6)\n")
    assert result.errors == ["Your code took too long to run and was stopped after 3 seconds."]
    assert time.monotonic() - started <= TEST_LIMITS.wall_seconds + 1.5
    await assert_still_serving(square_engine, sandbox_pool)


async def test_stdin_never_blocks(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                  sandbox_pool: SandboxPool) -> None:
    started = time.monotonic()
    result = await grade(abuse_engine, PROBE, attempt("""
        import os, sys
        data = sys.stdin.read()
        raw = os.read(0, 10)
        try:
            input()
        except EOFError:
            return f"eof {data!r} {raw!r}"
    """))
    assert observed(result) == "\"eof '' b''\"\n"
    assert time.monotonic() - started < TEST_LIMITS.wall_seconds
    await assert_still_serving(square_engine, sandbox_pool)


async def test_huge_output_is_truncated_and_graded(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                                   sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        import os
        print("x" * 100_000_000)          # one 100 MB line into the test's captured output
        for _ in range(64):
            os.write(1, b"y" * 1_000_000)  # 64 MB straight to the process's stdout pipe
        return "done"
    """))
    assert result.score == 0
    text = observed(result)
    assert text.endswith(R.TRUNCATED) and len(text) == R.TRUNCATE_AT + len(R.TRUNCATED)
    await assert_still_serving(square_engine, sandbox_pool)


async def test_stdout_flood_is_stopped(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                       sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        import os
        while True:
            os.write(2, b"z" * 65536)
    """))
    # Output past the cap is discarded; an endless flood ends with the CPU/wall limit or, past a
    # quarter gigabyte, with the output limit.
    (message,) = result.errors
    assert message in ("Your code printed far too much output and was stopped.",
                       "Your code took too long to run and was stopped after 3 seconds.",
                       "Your code used too much processor time and was stopped after 2 seconds of CPU time.")
    await assert_still_serving(square_engine, sandbox_pool)


async def test_disk_fill_is_stopped(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                    sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        import os
        i = 0
        while True:
            with open(f"f{i}", "wb") as fh:
                fh.write(os.urandom(200_000))
            i += 1
    """))
    assert result.errors == ["Your code wrote too much data to disk (more than 2048 KiB) and was stopped."]
    await assert_still_serving(square_engine, sandbox_pool)


async def test_one_huge_file_hits_the_file_size_limit(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                                      sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        try:
            with open("big", "wb") as fh:
                fh.write(b"0" * 10_000_000)
        except OSError as exc:
            return f"stopped: {exc.strerror}"
    """))
    assert observed(result) == "'stopped: File too large'\n"
    await assert_still_serving(square_engine, sandbox_pool)


async def test_fd_exhaustion(abuse_engine: GradingEngine, square_engine: GradingEngine,
                             sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        handles = []
        try:
            while True:
                handles.append(open("/dev/null"))
        except OSError as exc:
            return f"{exc.strerror} after {len(handles)}"
    """))
    text = observed(result)
    assert text.startswith("'Too many open files after ")
    assert int(text.split()[-1].rstrip("'\n")) < TEST_LIMITS.open_files
    await assert_still_serving(square_engine, sandbox_pool)


# -- escaping the sandbox ------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A real TCP server on 127.0.0.1 counting the connections it accepts."""
    accepted: list[object] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    server.close()


async def test_network_is_unreachable(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                      sandbox_pool: SandboxPool, listener: tuple[int, list[object]]) -> None:
    port, accepted = listener
    # The listener is real: a normal client reaches it.
    await asyncio.to_thread(lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close())
    for _ in range(50):
        if accepted:
            break
        await asyncio.sleep(0.02)
    assert len(accepted) == 1
    result = await grade(abuse_engine, PROBE, attempt(f"""
        import socket
        outcomes = []
        for family, address in ((socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET6, ("::1", {port}))):
            try:
                s = socket.socket(family, socket.SOCK_STREAM)
                s.settimeout(1)
                s.connect(address)
                outcomes.append("CONNECTED")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", {port}))
            outcomes.append("SENT")
        except OSError as exc:
            outcomes.append(type(exc).__name__)
        try:
            socket.getaddrinfo("example.com", 80)
            outcomes.append("RESOLVED")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        return " ".join(outcomes)
    """))
    text = observed(result)
    assert "CONNECTED" not in text and "SENT" not in text and "RESOLVED" not in text, text
    assert text.startswith("'PermissionError PermissionError PermissionError")
    await asyncio.sleep(0.3)
    assert len(accepted) == 1, "the sandbox reached the listener"
    await assert_still_serving(square_engine, sandbox_pool)


async def test_secrets_environment_and_grader_files_are_unreachable(
    abuse_engine: GradingEngine, square_engine: GradingEngine, sandbox_pool: SandboxPool
) -> None:
    targets = [
        f"{ABUSE_COURSE}/probe/answer.py", f"{ABUSE_COURSE}/probe/grade_probe.py",
        f"{EXAMPLES}/square/answer.py", "/proc/1/environ", f"/proc/{os.getpid()}/environ",
        f"/proc/{sandbox_pool.zygote_pid}/environ", f"/proc/{sandbox_pool.zygote_pid}/mem",
        "/var/run/secrets/kubernetes.io/serviceaccount/token", "/etc/shadow", "/etc/passwd",
    ]
    result = await grade(abuse_engine, PROBE, attempt(f"""
        import os
        seen = [repr(dict(os.environ))]
        for path in {targets!r} + ["/proc/%d/environ" % os.getppid(), "/proc/self/environ"]:
            try:
                with open(path, "rb") as fh:
                    seen.append(path + "=" + fh.read(4096).decode("latin-1"))
            except OSError as exc:
                seen.append(path + ":" + type(exc).__name__)
        for directory in ({ABUSE_COURSE!r}, {EXAMPLES!r}, "/proc", "..", "/tmp", "/"):
            try:
                seen.append(directory + "=" + ",".join(os.listdir(directory)))
            except OSError as exc:
                seen.append(directory + ":" + type(exc).__name__)
        return "\\n".join(seen)
    """))
    text = observed(result)
    assert ANSWER_SECRET not in text
    assert SECRET_ENV_VALUE not in text
    assert "XQGRADER" not in text
    assert "return x * x" not in text  # the example answer
    for path in targets:
        assert f"{path}:PermissionError" in text or f"{path}:FileNotFoundError" in text, path
    for directory in (ABUSE_COURSE, EXAMPLES, "..", "/tmp", "/"):
        assert f"{directory}:PermissionError" in text, directory
    await assert_still_serving(square_engine, sandbox_pool)


async def test_other_submissions_are_invisible(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                               sandbox_pool: SandboxPool) -> None:
    victim = attempt("""
        import time
        with open("private.txt", "w") as fh:
            fh.write("VICTIM-DATA-99")
        time.sleep(1.5)
        return "victim done"
    """)
    spy = attempt("""
        import os, time
        time.sleep(0.5)
        found = []
        for base in ("..", "/tmp", os.path.dirname(os.getcwd())):
            try:
                for name in os.listdir(base):
                    found.append(name)
                    path = os.path.join(base, name, "private.txt")
                    found.append(open(path).read())
            except OSError as exc:
                found.append(type(exc).__name__)
        return " ".join(found)
    """)
    victim_result, spy_result = await asyncio.gather(grade(abuse_engine, PROBE, victim),
                                                     grade(abuse_engine, PROBE, spy))
    assert observed(victim_result) == "'victim done'\n"
    text = observed(spy_result)
    assert "VICTIM-DATA-99" not in text
    assert text == "'PermissionError PermissionError PermissionError'\n"
    await assert_still_serving(square_engine, sandbox_pool)


async def test_signals_cannot_reach_the_grader(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                               sandbox_pool: SandboxPool) -> None:
    zygote = sandbox_pool.zygote_pid
    result = await grade(abuse_engine, PROBE, attempt(f"""
        import os, signal
        report = []
        for target in (os.getppid(), {zygote}, {os.getpid()}, -1, -{zygote}, 1):
            try:
                os.kill(target, signal.SIGKILL)
                report.append("KILLED")
            except OSError as exc:
                report.append(type(exc).__name__)
        killed = 0
        for pid in range(2, 40000):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
        report.append(str(killed))
        return " ".join(report)
    """))
    text = observed(result)
    assert "KILLED" not in text, text
    assert text.endswith(" 0'\n"), text
    assert sandbox_pool.zygote_pid == zygote and sandbox_pool.healthy
    await assert_still_serving(square_engine, sandbox_pool)


async def test_orphaned_background_processes_are_killed(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                                        sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        import os, subprocess, time
        started = []
        # A classic daemon: fork, try to start a new session, fork again, sleep forever.
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
            except OSError:
                pass
            if os.fork() == 0:
                time.sleep(1000)
            os._exit(0)
        os.waitpid(pid, 0)
        started.append("daemon")
        try:
            subprocess.Popen(["sleep", "1000"], start_new_session=True)
            started.append("popen-session")
        except OSError as exc:
            started.append(type(exc).__name__)
        subprocess.Popen(["nohup", "sleep", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append("nohup")
        return " ".join(started)
    """))
    assert "daemon" in observed(result) and "nohup" in observed(result)
    await assert_no_leftovers(sandbox_pool)
    await assert_still_serving(square_engine, sandbox_pool)


async def test_symlink_tricks_do_not_leak_or_damage(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                                    sandbox_pool: SandboxPool, tmp_path: Path) -> None:
    bait = tmp_path / "bait"
    bait.mkdir()
    (bait / "keep.txt").write_text("must survive")
    bait.chmod(0o755)
    answer = f"{ABUSE_COURSE}/probe/answer.py"
    result = await grade(abuse_engine, PROBE, attempt(f"""
        import os, shutil
        report = []
        os.symlink({answer!r}, "answer_link")
        os.symlink("/etc", "etc_link")
        shutil.rmtree("tmp")
        os.symlink({str(bait)!r}, "tmp")         # the cleanup must not follow this
        os.mkdir("locked", 0o300)                # cannot be listed, and must still be removed
        open("locked/f", "w").close()
        for path in ("answer_link", "etc_link/hostname"):
            try:
                report.append(open(path).read())
            except OSError as exc:
                report.append(type(exc).__name__)
        try:
            os.link({answer!r}, "hard")
            report.append("LINKED")
        except OSError as exc:
            report.append(type(exc).__name__)
        return " ".join(report)
    """))
    text = observed(result)
    assert ANSWER_SECRET not in text and "LINKED" not in text
    # The hard link is refused either way: EPERM from protected_hardlinks where another uid owns the
    # course (root mode), EXDEV from Landlock where the run's own uid does (a pod: seen on the real node).
    assert text in ("'PermissionError PermissionError PermissionError'\n",
                    "'PermissionError PermissionError OSError'\n"), text
    assert (bait / "keep.txt").read_text() == "must survive"
    assert oct(bait.stat().st_mode & 0o777) == oct(0o755)
    scratch = sandbox_pool._scratch
    assert scratch and os.listdir(scratch) == [], "run directories must be removed"
    await assert_still_serving(square_engine, sandbox_pool)


# -- forging results -------------------------------------------------------------------------------


async def test_forged_stdout_and_results_channel_cannot_raise_the_score(
    abuse_engine: GradingEngine, square_engine: GradingEngine, sandbox_pool: SandboxPool
) -> None:
    forged = textwrap.dedent("""
        import json, os, sys
        line = json.dumps({"correct": True, "score": 1, "msg": "<p>forged</p>"})
        print(line)
        os.write(1, (line + "\\n").encode())
        document = {"grader": {"status": "ok"}, "submission": {"status": "ok"}, "exceptions": 0,
                    "results": [["Test: attempt()", None, "'I guess the answer'\\n"]],
                    "prepare": {"status": "ok", "input_errors": [], "processed_submission": "x"},
                    "default_compare": [True]}
        os.write(3, json.dumps(document).encode())
        os._exit(0)
    """)
    result = await grade(abuse_engine, PROBE, forged)
    assert (result.correct, result.score) == (False, 0)
    assert result.tests[0][3] == f"'{ANSWER_SECRET}'\n"  # expected comes from the staff run only
    assert result.tests[0][4] == "'I guess the answer'\n"
    garbage = await grade(abuse_engine, PROBE, "import os\nos.write(3, b'{not json')\nos._exit(0)\n")
    assert garbage.score == 0 and garbage.errors == [R.RUN_PROBLEM, R.COULD_NOT_RUN]
    await assert_still_serving(square_engine, sandbox_pool)


async def test_swallowing_end_test_is_detected(square_engine: GradingEngine, sandbox_pool: SandboxPool) -> None:
    code = textwrap.dedent("""
        class Queue:
            def __init__(self):
                self.items = []
            def insert(self, x):
                self.items.append(x)
            def remove(self):
                try:
                    import gradelib, sys
                    sys.modules["grade_queue"].grader.end_test("fake")
                except:
                    pass
                return self.items.pop(0)
    """)
    result = await grade(square_engine, "queue_class/grade_queue.py", code)
    assert result.errors == ["Your code interfered with our grader.  Don't use bare 'except' clauses."]
    await assert_still_serving(square_engine, sandbox_pool)


# -- broken course code ------------------------------------------------------------------------------


async def test_grader_that_crashes(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                   sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, "crash/grade_crash.py", attempt("return 1"))
    assert result.errors == [R.STAFF_PROBLEM]
    await assert_still_serving(square_engine, sandbox_pool)


async def test_submission_that_crashes_the_staff_run(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                                     sandbox_pool: SandboxPool) -> None:
    crashing = await grade(abuse_engine, "fragile/grade_fragile.py", "def attempt():\n    return 'héllo'\n")
    assert crashing.errors == [R.PREPARE_PROBLEM]
    started = time.monotonic()
    hanging = await grade(abuse_engine, "fragile/grade_fragile.py", "a" * 40 + "!")
    assert hanging.errors == [R.STAFF_PROBLEM]
    assert time.monotonic() - started <= TEST_LIMITS.wall_seconds + 2
    fine = await grade(abuse_engine, "fragile/grade_fragile.py", "def attempt():\n    return 42\n")
    assert fine.score == 1
    await assert_still_serving(square_engine, sandbox_pool)


async def test_namespace_and_privilege_tricks_fail(abuse_engine: GradingEngine, square_engine: GradingEngine,
                                                   sandbox_pool: SandboxPool) -> None:
    result = await grade(abuse_engine, PROBE, attempt("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        report = []
        for name, call in (("unshare", lambda: libc.unshare(0x10000000)),       # CLONE_NEWUSER
                           ("ptrace", lambda: libc.ptrace(16, os.getppid(), 0, 0)),  # PTRACE_ATTACH
                           ("mount", lambda: libc.mount(b"none", b"tmp", b"tmpfs", 0, None)),
                           ("setuid", lambda: libc.setuid(0))):
            report.append(name + ("=ok" if call() == 0 else "=denied"))
        return " ".join(report)
    """))
    assert observed(result) == "'unshare=denied ptrace=denied mount=denied setuid=denied'\n"
    await assert_still_serving(square_engine, sandbox_pool)


# -- same uid: what one process of the grader's uid could do to another ------------------------------
#
# In a restricted pod the daemon, the zygote and student code share one uid.  Each class below
# runs twice: as root with student code under the sandbox uid ("root"), and with daemon, zygote
# and student code under one unprivileged uid and course files owned by it ("same_uid").


@pytest.fixture(scope="module", params=MODES)
async def target(request: pytest.FixtureRequest) -> AsyncIterator[LocalTarget | RemoteTarget]:
    started = await start_target(request.param)
    yield started
    await started.close()


def lexists(path: str) -> bool:
    return os.path.lexists(path)


def write_text(path: str, text: str) -> None:
    Path(path).write_text(text)


def read_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def probe_answer(target: LocalTarget | RemoteTarget) -> str:
    return os.path.join(target.courses["abuse"], "probe", "answer.py")


async def target_attempt(target: LocalTarget | RemoteTarget, body: str) -> str:
    return observed(await target.grade("abuse", PROBE, attempt(body)))


async def assert_target_serving(target: LocalTarget | RemoteTarget) -> None:
    """The next submissions (two problems, one of them reading answer.py) are graded normally."""
    square = await target.grade("examples", "square/grade_square.py", SQUARE_OK)
    assert (square.correct, square.score, square.errors) == (True, 1.0, [])
    right = await target.grade("abuse", PROBE, f"def attempt():\n    return {ANSWER_SECRET!r}\n")
    assert (right.correct, right.score) == (True, 1.0), right
    info = await target.info()
    assert info["healthy"] and info["usable"]


OUTCOME_HELPER = """
    out = []
    def t(name, call):
        try:
            call()
            out.append(name + "=DONE")
        except OSError as exc:
            out.append(name + "=" + type(exc).__name__)
"""


def outcomes(text: str) -> dict[str, str]:
    """``name=Outcome`` pairs the probe printed (as a repr of a space-separated string)."""
    pairs = text.strip().strip("'\"").split()
    return dict(pair.split("=", 1) for pair in pairs)


@pytest.fixture
def unix_services() -> Iterator[dict[str, object]]:
    """Services of the machine reachable through unix sockets (a database, a log daemon): a
    pathname stream socket, a pathname datagram socket and an abstract stream socket, all
    open to every uid, recording whatever reaches them."""
    base = tempfile.mkdtemp(prefix="xqgrader-svc-")
    os.chmod(base, 0o755)
    stream_path, dgram_path = os.path.join(base, "db.sock"), os.path.join(base, "log.sock")
    abstract = f"\0xqgrader-test-{os.getpid()}"
    listeners = []
    for address in (stream_path, abstract):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(address)
        server.listen(8)
        server.settimeout(0.2)
        listeners.append(server)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(dgram_path)
    dgram.settimeout(0.2)
    for path in (stream_path, dgram_path):
        os.chmod(path, 0o777)
    reached: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for server in listeners:
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                reached.append("stream")
                conn.close()
            try:
                dgram.recv(100)
                reached.append("datagram")
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield {"stream": stream_path, "dgram": dgram_path, "abstract": abstract, "reached": reached}
    stop.set()
    thread.join(5)
    for sock in [*listeners, dgram]:
        sock.close()
    shutil.rmtree(base, ignore_errors=True)


async def test_unix_and_other_socket_families_are_denied(target: LocalTarget | RemoteTarget,
                                                         unix_services: dict[str, object]) -> None:
    services = unix_services
    # The services are real: a normal client of another uid reaches them.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.connect(str(services["stream"]))
    await asyncio.sleep(0.5)
    assert services["reached"] == ["stream"]
    services["reached"].clear()
    text = await target_attempt(target, OUTCOME_HELPER + f"""
    import asyncio, socket
    def stream(address):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(address)
    t("stream", lambda: stream({services["stream"]!r}))
    t("abstract", lambda: stream({services["abstract"]!r}))
    t("dgram", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", {services["dgram"]!r}))
    t("pair_dgram", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendto(b"x", {services["dgram"]!r}))
    t("pair_seqpacket", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
    t("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
    t("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    # A stream pair is connected to itself from birth: usable, and never pointable elsewhere.
    a, b = socket.socketpair()
    a.sendall(b"ping")
    t("pair_stream_works", lambda: b.recv(4) == b"ping" or 1 / 0)
    t("pair_stream_connect", lambda: a.connect({services["stream"]!r}))
    t("pair_stream_sendto", lambda: a.sendto(b"x", {services["dgram"]!r}))
    t("asyncio", lambda: asyncio.run(asyncio.sleep(0)))
    return " ".join(out)
    """)
    result = outcomes(text)
    denied = ("stream", "abstract", "dgram", "pair_dgram", "pair_seqpacket", "netlink", "inet", "pair_stream_connect")
    assert {name: result[name] for name in denied} == dict.fromkeys(denied, "PermissionError"), text
    assert result["pair_stream_sendto"] != "DONE", text
    assert (result["pair_stream_works"], result["asyncio"]) == ("DONE", "DONE"), text
    await asyncio.sleep(0.5)
    assert services["reached"] == [], "student code reached a unix socket service"
    await assert_target_serving(target)


IPC_KEY = 0x58510000 + os.getpid() % 0xFFFF
MQ_NAME = f"/xqgrader-test-{os.getpid()}"
IPC_PRELUDE = f"""
    import ctypes, ctypes.util, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        libc.mq_open
        rt = libc
    except AttributeError:
        rt = ctypes.CDLL(ctypes.util.find_library("rt"), use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    KEY, NAME, CREATE = {IPC_KEY}, {MQ_NAME.encode()!r}, 0o1000 | 0o666
    class Msg(ctypes.Structure):
        _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 16)]
    out = []
    def failed(name):
        out.append(name + "=" + errno.errorcode.get(ctypes.get_errno(), "?"))
"""


def remove_ipc_objects() -> None:
    """Clean-up from outside, for runs without the fix that did leave objects behind."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_rmid = 0
    shm = libc.shmget(IPC_KEY, 0, 0)
    if shm != -1:
        libc.shmctl(shm, ipc_rmid, None)
    msq = libc.msgget(IPC_KEY, 0)
    if msq != -1:
        libc.msgctl(msq, ipc_rmid, None)
    sem = libc.semget(IPC_KEY, 0, 0)
    if sem != -1:
        libc.semctl(sem, 0, ipc_rmid)
    with contextlib.suppress(AttributeError):
        libc.mq_unlink(MQ_NAME.encode())


def ipc_keys_left() -> list[str]:
    left = []
    for kind in ("shm", "msg", "sem"):
        with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as fh:
            for line in fh.read().splitlines()[1:]:
                if line.split() and int(line.split()[0]) == IPC_KEY:
                    left.append(kind)
    return left


async def test_ipc_objects_do_not_pass_between_runs(target: LocalTarget | RemoteTarget) -> None:
    writer = IPC_PRELUDE + """
    shm = libc.shmget(KEY, 4096, CREATE)
    if shm == -1:
        failed("shm")
    else:
        ctypes.memmove(libc.shmat(shm, None, 0), b"LEAK-SHM", 8)
        out.append("shm=WRITTEN")
    msq = libc.msgget(KEY, CREATE)
    if msq == -1 or libc.msgsnd(msq, ctypes.byref(Msg(1, b"LEAK-MSG")), 16, 0) != 0:
        failed("msg")
    else:
        out.append("msg=SENT")
    sem = libc.semget(KEY, 1, CREATE)
    if sem == -1:
        failed("sem")
    else:
        out.append("sem=CREATED")
    mq = rt.mq_open(NAME, os.O_CREAT | os.O_RDWR, 0o666, None)
    if mq == -1 or rt.mq_send(mq, b"LEAK-MQ", 7, 0) != 0:
        failed("mq")
    else:
        out.append("mq=SENT")
    return " ".join(out)
    """
    reader = IPC_PRELUDE + """
    shm = libc.shmget(KEY, 0, 0)
    if shm == -1:
        failed("shm")
    else:
        out.append("shm=" + ctypes.string_at(libc.shmat(shm, None, 0), 8).decode())
    msq = libc.msgget(KEY, 0)
    message = Msg()
    if msq == -1 or libc.msgrcv(msq, ctypes.byref(message), 16, 0, 0o4000) < 0:
        failed("msg")
    else:
        out.append("msg=" + message.mtext.decode())
    if libc.semget(KEY, 0, 0) == -1:
        failed("sem")
    else:
        out.append("sem=FOUND")
    mq = rt.mq_open(NAME, os.O_RDONLY, 0, None)
    buffer = ctypes.create_string_buffer(1 << 16)
    if mq == -1 or rt.mq_receive(mq, buffer, 1 << 16, None) < 0:
        failed("mq")
    else:
        out.append("mq=" + buffer.value.decode())
    return " ".join(out)
    """
    try:
        written = outcomes(await target_attempt(target, writer))
        read = await target_attempt(target, reader)
        left = ipc_keys_left()
    finally:
        remove_ipc_objects()
    assert written == {"shm": "EPERM", "msg": "EPERM", "sem": "EPERM", "mq": "EPERM"}, written
    assert "LEAK" not in read and "FOUND" not in read, read
    assert left == [], f"IPC objects outlived the run: {left}"
    await assert_target_serving(target)


def process_settings(pid: int) -> dict[str, object]:
    """What the test (root) sees of another process: limits, nice, scheduling, CPUs."""
    return {
        "nofile": prlimit(pid, resource.RLIMIT_NOFILE),
        "cpu": prlimit(pid, resource.RLIMIT_CPU),
        "nice": os.getpriority(os.PRIO_PROCESS, pid),
        "policy": os.sched_getscheduler(pid),
        "cpus": os.sched_getaffinity(pid),
    }


async def test_limits_and_priorities_of_other_processes_cannot_change(target: LocalTarget | RemoteTarget) -> None:
    info = await target.info()
    daemon, zygote = int(info["pid"]), int(info["zygote_pid"])
    before = {pid: process_settings(pid) for pid in (daemon, zygote)}
    ioprio_set = {"x86_64": 251, "aarch64": 30}[platform.machine()]
    text = await target_attempt(target, OUTCOME_HELPER + f"""
    import ctypes, os, resource
    libc = ctypes.CDLL(None, use_errno=True)
    def ioprio(which, who):
        if libc.syscall({ioprio_set}, which, who, 3 << 13) != 0:   # the idle I/O class
            raise OSError(ctypes.get_errno(), "ioprio_set")
    for label, pid in (("daemon", {daemon}), ("zygote", {zygote}), ("supervisor", os.getppid())):
        t(label + ".nofile", lambda pid=pid: resource.prlimit(pid, resource.RLIMIT_NOFILE, (4, 4)))
        t(label + ".cpu", lambda pid=pid: resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1)))
        t(label + ".nice", lambda pid=pid: os.setpriority(os.PRIO_PROCESS, pid, 19))
        t(label + ".cpus", lambda pid=pid: os.sched_setaffinity(pid, {{0}}))
        t(label + ".policy", lambda pid=pid: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)))
        t(label + ".ioprio", lambda pid=pid: ioprio(1, pid))
    t("group.nice", lambda: os.setpriority(os.PRIO_PGRP, {zygote}, 19))
    t("user.nice", lambda: os.setpriority(os.PRIO_USER, {target.uid}, 19))
    t("group.ioprio", lambda: ioprio(2, {zygote}))
    t("user.ioprio", lambda: ioprio(3, {target.uid}))
    # Its own limits and priority remain the student's to lower.
    t("self.nofile", lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)))
    t("self.nice", lambda: os.nice(1))
    t("self.cpus", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))
    return " ".join(out)
    """)
    result = outcomes(text)
    others = {name: value for name, value in result.items() if not name.startswith("self.")}
    assert len(others) == 22 and set(others.values()) == {"PermissionError"}, text
    assert [result["self.nofile"], result["self.nice"], result["self.cpus"]] == ["DONE"] * 3, text
    assert {pid: process_settings(pid) for pid in (daemon, zygote)} == before
    await assert_target_serving(target)


def metadata(path: str) -> tuple[int, int, int | None]:
    """Mode, owner and (for files; directories change with their entries) modification time."""
    st = os.stat(path)
    return st.st_mode, st.st_uid, None if os.path.isdir(path) else st.st_mtime_ns


async def test_file_metadata_outside_the_run_cannot_change(target: LocalTarget | RemoteTarget) -> None:
    info = await target.info()
    scratch = str(info["scratch"])
    answer = probe_answer(target)
    course = target.courses["abuse"]
    watched = (scratch, answer, course)
    before = {path: metadata(path) for path in watched}
    attack = attempt(OUTCOME_HELPER + f"""
    import os, time
    scratch = os.path.dirname(os.getcwd())
    t("scratch.chmod", lambda: os.chmod(scratch, 0))
    t("scratch.utime", lambda: os.utime(scratch, (0, 0)))
    t("answer.chmod", lambda: os.chmod({answer!r}, 0))
    t("answer.chown", lambda: os.chown({answer!r}, -1, -1))
    t("answer.utime", lambda: os.utime({answer!r}, (0, 0)))
    t("answer.xattr", lambda: os.setxattr({answer!r}, "user.x", b"1"))
    t("answer.truncate", lambda: os.truncate({answer!r}, 0))
    t("course.chmod", lambda: os.chmod({course!r}, 0))
    # Its own files: denied as well (seccomp cannot see paths); they are made with the right mode.
    t("own.chmod", lambda: os.chmod("tmp", 0o700))
    time.sleep(1.5)   # a concurrent run starts meanwhile
    return " ".join(out)
    """)

    async def victim() -> GradeResult:
        await asyncio.sleep(0.5)
        return await target.grade("abuse", PROBE, attempt("""
            with open("mine.txt", "w") as fh:
                fh.write("victim ok")
            return open("mine.txt").read()
        """))

    try:
        attacked, concurrent = await asyncio.gather(target.grade("abuse", PROBE, attack), victim())
        after = {path: metadata(path) for path in watched}
    finally:
        for path, (mode, _uid, mtime) in before.items():
            os.chmod(path, mode & 0o7777)
            if mtime is not None:
                os.utime(path, ns=(mtime, mtime))
    result = outcomes(observed(attacked))
    assert set(result.values()) == {"PermissionError"} and len(result) == 9, result
    assert observed(concurrent) == "'victim ok'\n", "a concurrent run was disturbed"
    assert after == before
    await assert_target_serving(target)


async def test_grader_processes_and_course_files_are_out_of_reach(target: LocalTarget | RemoteTarget) -> None:
    """The older classes (secrets, signals) once more, now also under one uid with the daemon."""
    info = await target.info()
    daemon, zygote = int(info["pid"]), int(info["zygote_pid"])
    answer = probe_answer(target)
    text = await target_attempt(target, OUTCOME_HELPER + f"""
    import os, signal
    for label, path in (("answer", {answer!r}), ("daemon_environ", "/proc/{daemon}/environ"),
                        ("zygote_environ", "/proc/{zygote}/environ"), ("daemon_mem", "/proc/{daemon}/mem")):
        t("read_" + label, lambda path=path: print(open(path, "rb").read(4096)))
    # SIGCONT: harmless if it arrived, and permission is all that is asked here.
    for label, pid in (("daemon", {daemon}), ("zygote", {zygote}), ("supervisor", os.getppid()),
                       ("everyone", -1), ("zygote_group", -{zygote})):
        t("signal_" + label, lambda pid=pid: os.kill(pid, signal.SIGCONT))
    return " ".join(out)
    """)
    assert ANSWER_SECRET not in text and SECRET_ENV_VALUE not in text
    result = outcomes(text)
    assert len(result) == 9 and set(result.values()) == {"PermissionError"}, text
    await assert_target_serving(target)


@pytest.fixture(params=MODES)
async def target_without_landlock(request: pytest.FixtureRequest) -> AsyncIterator[LocalTarget | RemoteTarget]:
    """An older kernel: seccomp but no Landlock, so the course folder is reachable by path."""
    started = await start_target(request.param, disable=("landlock",))
    yield started
    await started.close()


async def test_without_landlock_course_files_still_cannot_change(
    target_without_landlock: LocalTarget | RemoteTarget,
) -> None:
    target = target_without_landlock
    assert not (await target.info())["features"]["landlock"]
    answer = probe_answer(target)
    before = read_bytes(answer)
    text = await target_attempt(target, OUTCOME_HELPER + f"""
    import os
    answer = {answer!r}
    def overwrite():
        with open(answer, "w") as fh:
            fh.write("def attempt():\\n    return 'forged'\\n")
    t("write", overwrite)
    t("chmod", lambda: os.chmod(answer, 0o600))
    t("rename", lambda: os.rename(answer, answer + ".old"))
    t("unlink", lambda: os.unlink(answer))
    t("create", lambda: open(os.path.join(os.path.dirname(answer), "new.py"), "w").close())
    return " ".join(out)
    """)
    result = outcomes(text)
    assert result == dict.fromkeys(("write", "chmod", "rename", "unlink", "create"), "PermissionError"), text
    assert read_bytes(answer) == before
    await assert_target_serving(target)


# -- recovering by itself -------------------------------------------------------------------------


@pytest.fixture(params=MODES)
async def fresh_target(request: pytest.FixtureRequest) -> AsyncIterator[LocalTarget | RemoteTarget]:
    """A target of its own: these tests damage it from outside."""
    started = await start_target(request.param)
    yield started
    await started.close()


async def test_a_damaged_scratch_area_is_replaced(fresh_target: LocalTarget | RemoteTarget) -> None:
    target = fresh_target
    info = await target.info()
    old_scratch, old_zygote = str(info["scratch"]), info["zygote_pid"]
    # Whatever did it (a kernel without seccomp, an operator, a bug): nobody may use it now.
    os.chmod(old_scratch, 0)
    # Two submissions at once meet the damage; the zygote is replaced once, both are graded.
    both = await asyncio.gather(target.grade("examples", "square/grade_square.py", SQUARE_OK),
                                target.grade("abuse", PROBE, f"def attempt():\n    return {ANSWER_SECRET!r}\n"))
    assert [(r.correct, r.score, r.errors) for r in both] == [(True, 1.0, [])] * 2
    await assert_target_serving(target)
    info = await target.info()
    assert info["scratch"] != old_scratch and info["zygote_pid"] != old_zygote
    assert info["replacements"] == 1
    assert not lexists(old_scratch), "the damaged scratch area is removed"


async def test_a_zygote_with_changed_limits_is_replaced(fresh_target: LocalTarget | RemoteTarget) -> None:
    target = fresh_target
    old_zygote = int((await target.info())["zygote_pid"])
    prlimit(old_zygote, resource.RLIMIT_NOFILE, (16, 16))
    os.setpriority(os.PRIO_PROCESS, old_zygote, 15)
    os.sched_setaffinity(old_zygote, {min(os.sched_getaffinity(0))})
    text = await target_attempt(target, """
        import os, resource
        return (resource.getrlimit(resource.RLIMIT_NOFILE), os.getpriority(os.PRIO_PROCESS, 0),
                len(os.sched_getaffinity(0)))
    """)
    # The run got the configured limits, the usual nice 10 and every CPU.
    assert text == f"({TEST_LIMITS.open_files, TEST_LIMITS.open_files}, 10, {len(os.sched_getaffinity(0))})\n"
    info = await target.info()
    assert info["zygote_pid"] != old_zygote and info["replacements"] == 1
    await assert_target_serving(target)


# -- the real daemon, as root or as one unprivileged uid ----------------------------------------------


# real_daemon's value: starts a daemon with the given settings and returns it once it is ready.
StartDaemon = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture(params=MODES)
async def real_daemon(request: pytest.FixtureRequest, fake_xqueue: FakeXQueue) -> AsyncIterator[StartDaemon]:
    daemons: list[DaemonProcess] = []

    async def start(**settings: object) -> DaemonProcess:
        daemon = DaemonProcess(request.param, fake_xqueue.url, fake_xqueue.queue, fake_xqueue.username,
                               fake_xqueue.password, **settings).start()
        daemons.append(daemon)
        await daemon.wait_status("/readyz", 200, 60)
        return daemon

    yield start
    for daemon in daemons:
        await asyncio.to_thread(daemon.stop)


async def graded(fake: FakeXQueue, submission_id: int, seconds: float = 30) -> dict[str, object]:
    await wait_until(lambda: fake.result_for(submission_id), seconds, f"submission {submission_id} to be graded")
    (body,) = fake.result_for(submission_id)
    return body


async def test_submissions_cannot_reach_the_daemon_process(real_daemon: StartDaemon, fake_xqueue: FakeXQueue) -> None:
    daemon = await real_daemon()
    zygote = daemon.zygote_pid()
    before = {pid: process_settings(pid) for pid in (daemon.pid, zygote)}
    attack = fake_xqueue.submit(lms_body(PROBE, attempt(OUTCOME_HELPER + f"""
    import os, resource, signal
    for label, pid in (("daemon", {daemon.pid}), ("zygote", {zygote})):
        t(label + ".nofile", lambda pid=pid: resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, 3)))
        t(label + ".nice", lambda pid=pid: os.setpriority(os.PRIO_PROCESS, pid, 19))
        t(label + ".stop", lambda pid=pid: os.kill(pid, signal.SIGSTOP))
    return " ".join(out)
    """)))
    body = await graded(fake_xqueue, attack)
    assert "DONE" not in str(body["msg"]) and str(body["msg"]).count("PermissionError") == 6, body["msg"]
    after = {pid: process_settings(pid) for pid in (daemon.pid, zygote)}
    assert after == before
    right = fake_xqueue.submit(lms_body(PROBE, f"def attempt():\n    return {ANSWER_SECRET!r}\n"))
    assert (await graded(fake_xqueue, right))["correct"] is True


async def test_a_daemon_that_cannot_grade_stops_being_alive(real_daemon: StartDaemon, fake_xqueue: FakeXQueue) -> None:
    daemon = await real_daemon(self_test_seconds=0.5, liveness_grace_seconds=2)
    assert (await daemon.get("/healthz"))[0] == 200
    # Break the sandbox beyond what the daemon can repair: its scratch area and the folder in
    # which a fresh one would be made are gone, a file stands in the way.
    os.rename(daemon.scratch_root, daemon.scratch_root + ".gone")
    write_text(daemon.scratch_root, "in the way")
    try:
        await daemon.wait_status("/readyz", 503, 10)
        reason = await daemon.wait_status("/healthz", 503, 15)
        assert "sandbox" in reason["status"], reason
        # Not ready and not alive agree: the kubelet restarts the pod.
        assert (await daemon.get("/readyz"))[0] == 503
        # Meanwhile it takes no work (each pull would count towards the submission's poison limit).
        pulls_before = fake_xqueue.count("/xqueue/get_submission/")
        waiting = fake_xqueue.submit(lms_body(PROBE, f"def attempt():\n    return {ANSWER_SECRET!r}\n"))
        await asyncio.sleep(2)
        assert fake_xqueue.count("/xqueue/get_submission/") == pulls_before
        assert fake_xqueue.result_for(waiting) == []
    finally:
        os.unlink(daemon.scratch_root)
        os.rename(daemon.scratch_root + ".gone", daemon.scratch_root)


async def test_the_daemon_notices_its_own_limits_changing(real_daemon: StartDaemon) -> None:
    daemon = await real_daemon(self_test_seconds=0.5)
    nofile = resource.RLIMIT_NOFILE
    original = prlimit(daemon.pid, nofile)
    cut = len(os.listdir(f"/proc/{daemon.pid}/fd")) + 20
    try:
        # Soft limit only: any process can put that back, and the daemon does.
        prlimit(daemon.pid, nofile, (cut, original[1]))
        await wait_until(lambda: prlimit(daemon.pid, nofile) == original, 10, "the daemon to restore its limit",
                         interval=0.1)
        await daemon.wait_status("/healthz", 200, 10)
        # The hard limit too: a daemon that may raise it again (privileged) does; otherwise the
        # pod must be restarted, and liveness says so.
        prlimit(daemon.pid, nofile, (cut, cut))
        outcome: list[Any] = []  # [restored, /healthz body]

        async def settled() -> bool:
            status, body = await daemon.get("/healthz")
            restored = prlimit(daemon.pid, nofile) == original
            if (restored and status == 200) or (not restored and status == 503):
                outcome[:] = [restored, body]
                return True
            return False

        await wait_until(settled, 10, "liveness to reflect the daemon's changed limits", interval=0.2)
        restored, body = outcome
        if not restored:
            assert "RLIMIT_NOFILE" in body["status"], body
    finally:
        # Raising a hard limit needs CAP_SYS_RESOURCE, which this test may lack as well.
        put_back = False
        with contextlib.suppress(OSError):
            prlimit(daemon.pid, nofile, original)
            put_back = True
    if put_back:
        await daemon.wait_status("/healthz", 200, 10)
    assert sum("changed from outside" in line["msg"] for line in daemon.log_lines()) <= 3


async def test_running_out_of_file_descriptors_is_logged_once(real_daemon: StartDaemon) -> None:
    daemon = await real_daemon()
    original = prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    open_fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
    clients: list[socket.socket] = []
    try:
        # The soft limit: what the daemon (and this test) can put back without privileges.
        prlimit(daemon.pid, resource.RLIMIT_NOFILE, (open_fds, original[1]))
        for _ in range(30):
            client = socket.create_connection(("127.0.0.1", daemon.port), timeout=2)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(client)
        await asyncio.sleep(3)
    finally:
        prlimit(daemon.pid, resource.RLIMIT_NOFILE, original)
        for client in clients:
            client.close()
    await daemon.wait_status("/healthz", 200, 15)
    accept_lines = [line for line in daemon.log_lines() if "accept" in line["msg"]]
    assert 1 <= len(accept_lines) <= 2, f"{len(accept_lines)} log lines about accept()"
