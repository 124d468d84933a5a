"""Sandbox abuse suite (anchors.md section 6.6): every case must end with a clear answer to the
student, leave nothing running, and the very same engine must grade the next submission normally.

The engine fixture is shared by the whole module on purpose: surviving one case is only proven by
grading correctly afterwards.  Limits are small (wall 3 s, CPU 2 s) to keep the suite fast.
"""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from xqueue_grader import results as R
from xqueue_grader.engine import GradingEngine
from xqueue_grader.results import GradeResult
from xqueue_grader.sandbox import SandboxPool

from .conftest import ABUSE_COURSE, EXAMPLES, SECRET_ENV_VALUE, SESSION_UID, TEST_LIMITS, grade

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
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not sandbox_processes(zygote):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"processes left running: {sandbox_processes(zygote)}")


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
    assert text == "'PermissionError PermissionError PermissionError'\n"
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
