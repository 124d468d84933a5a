"""The sandbox on its own: features, limits, environment, clean-up, recovery, and each isolation
layer proven separately (with the others switched off)."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import textwrap
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from xqueue_grader.jobs import job_from_json
from xqueue_grader.sandbox import Limits, RunResult, SandboxPool
from xqueue_grader.sandbox.limits import rlimit_pairs

from .helpers import EXAMPLES, SESSION_UID, TEST_LIMITS, sandbox_settings, wait_until


def exists(path: str) -> bool:
    return os.path.exists(path)


def read_text(path: str) -> str:
    with open(path) as fh:
        return fh.read()


async def script(pool: SandboxPool, code: str, limits: Limits = TEST_LIMITS, **extra: object) -> RunResult:
    """Run ``code`` as a script job; ``extra``: more fields of the job's JSON form (``files``)."""
    return await pool.run(job_from_json({"mode": "script", "code": textwrap.dedent(code), **extra}), limits)


def test_rlimits_cover_every_limit() -> None:
    pairs = dict(rlimit_pairs(Limits(cpu_seconds=5, memory_mb=256, file_size_kb=1024, open_files=64,
                                     processes=64)))
    assert pairs[resource.RLIMIT_CPU] == (5, 6)
    assert pairs[resource.RLIMIT_AS] == (256 << 20, 256 << 20)
    assert pairs[resource.RLIMIT_FSIZE] == (1 << 20, 1 << 20)
    assert pairs[resource.RLIMIT_NOFILE] == (64, 64)
    assert pairs[resource.RLIMIT_NPROC] == (64, 64)
    assert pairs[resource.RLIMIT_CORE] == (0, 0)


async def test_features_are_detected_and_reported(sandbox_pool: SandboxPool) -> None:
    features = sandbox_pool.features
    assert features["seccomp"] is True
    assert features["landlock"] is True and features["landlock_abi"] >= 1
    assert features["network"] in ("socket-denied", "connect-denied")
    assert features["exposed_paths"] == []
    assert features["uid"] == (SESSION_UID if os.geteuid() == 0 else os.geteuid())


async def test_child_gets_limits_private_dir_and_scrubbed_environment(sandbox_pool: SandboxPool) -> None:
    result = await script(sandbox_pool, """
        import json, os, resource

        def _is_open(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False

        print(json.dumps({
            "env": sorted(os.environ),
            "cwd": os.getcwd(),
            "cwd_mode": oct(os.stat(".").st_mode & 0o777),
            "limits": {name: resource.getrlimit(getattr(resource, name))
                       for name in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE",
                                    "RLIMIT_NPROC", "RLIMIT_CORE")},
            "open_fds": [fd for fd in range(64) if _is_open(fd)],
            "uid": os.getuid(), "pgid_is_pid": os.getpgid(0) == os.getpid(),
        }))
    """)
    assert result.status == "ok", result
    info = json.loads(result.stdout)
    assert info["env"] == ["HOME", "LANG", "LC_ALL", "MKL_NUM_THREADS", "OMP_NUM_THREADS",
                           "OPENBLAS_NUM_THREADS", "PATH", "PYTHONIOENCODING", "TMPDIR"]
    assert info["cwd_mode"] == "0o700"
    assert info["limits"]["RLIMIT_CPU"] == [2, 3]
    assert info["limits"]["RLIMIT_AS"] == [256 << 20, 256 << 20]
    assert info["limits"]["RLIMIT_NPROC"] == [32, 32]
    assert info["limits"]["RLIMIT_CORE"] == [0, 0]
    assert info["pgid_is_pid"] is True
    # stdin, stdout, stderr and the results channel; nothing of the zygote or supervisor.
    assert info["open_fds"] == [0, 1, 2, 3]
    assert info["uid"] != 0
    assert not exists(info["cwd"]), "the private directory is removed afterwards"


async def test_script_mode_exit_status_output_and_files(sandbox_pool: SandboxPool) -> None:
    import base64

    result = await script(sandbox_pool, """
        import sys
        print(open("data.txt").read().upper())
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """, files={"data.txt": base64.b64encode(b"hello").decode()})
    assert (result.status, result.exit_code) == ("failed", 3)
    assert result.stdout == "HELLO\n" and result.stderr == "to stderr\n"


async def test_legacy_import_names_are_one_module(sandbox_pool: SandboxPool) -> None:
    result = await script(sandbox_pool, """
        import gradelib
        import grader_support.gradelib as nested
        from grader_support import gradelib as attribute
        from xqueue_grader.runtime import gradelib as ours
        print(gradelib is nested is attribute is ours, gradelib.EndTest is ours.EndTest)
    """)
    assert result.stdout == "True True\n", result.stderr


async def test_concurrent_runs_are_independent(sandbox_pool: SandboxPool) -> None:
    runs = await asyncio.gather(*(script(sandbox_pool, f"""
        import os, time
        open("mine", "w").write("{i}")
        time.sleep(0.2)
        print(open("mine").read(), len(os.listdir(".")))
    """) for i in range(4)))
    assert sorted(r.stdout for r in runs) == [f"{i} 2\n" for i in range(4)]  # "mine" and "tmp"


async def test_run_dir_cleanup_survives_hostile_permissions(sandbox_pool: SandboxPool) -> None:
    result = await script(sandbox_pool, """
        import os
        # chmod is denied, but mkdir's mode still makes directories that cannot be listed.
        os.mkdir("a", 0o300)
        os.mkdir("a/b", 0o700)
        os.mkdir("a/b/c", 0o300)
        open("a/b/f", "w").write("x")
        open("a/b/c/g", "w").write("x")
        try:
            os.chmod("a", 0)
            print("CHMOD")
        except PermissionError:
            pass
        print(os.getcwd())
    """)
    assert result.status == "ok", result
    assert "CHMOD" not in result.stdout
    assert not exists(result.stdout.strip())


async def test_zygote_restarts_after_being_killed() -> None:
    pool = SandboxPool(sandbox_settings())
    await pool.start()
    scratch = pool._scratch
    assert scratch and exists(scratch)
    try:
        first = pool.zygote_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: not pool.healthy, 2, "the pool to notice its zygote died", interval=0.02)
        result = await script(pool, "print('again')")
        assert result.stdout == "again\n"
        assert pool.zygote_pid != first
    finally:
        await pool.close()
    assert pool.zygote_pid is None
    assert not exists(scratch), "closing the pool removes its scratch directory"


async def test_a_killed_supervisor_gives_a_sandbox_error_not_a_hang() -> None:
    pool = SandboxPool(sandbox_settings())
    await pool.start()
    try:
        task = asyncio.create_task(script(pool, "import time; time.sleep(30)", Limits(wall_seconds=30)))
        await asyncio.sleep(0.5)
        # Kill every supervisor (children of the zygote) from outside.
        zygote = pool.zygote_pid
        children = read_text(f"/proc/{zygote}/task/{zygote}/children").split()
        assert children
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        started = time.monotonic()
        result = await asyncio.wait_for(task, 10)
        assert result.status == "sandbox_error"
        assert time.monotonic() - started < 5
        ok = await script(pool, "print('fine')")
        assert ok.stdout == "fine\n"
    finally:
        await pool.close()


# -- each layer on its own -----------------------------------------------------------------------


@pytest.fixture
async def pool_without() -> AsyncIterator[object]:
    pools: list[SandboxPool] = []

    async def make(*layers: str) -> SandboxPool:
        pool = SandboxPool(sandbox_settings(disable=layers))
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


PROBE_NETWORK = """
    import socket
    try:
        s = socket.socket()
        s.settimeout(2)
        s.connect(("127.0.0.1", {port}))
        print("CONNECTED")
    except OSError as exc:
        print(type(exc).__name__)
"""

PROBE_FILE = """
    try:
        print(open({path!r}).read()[:20])
    except OSError as exc:
        print(type(exc).__name__)
"""


@pytest.fixture
def tcp_port() -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


async def test_seccomp_alone_blocks_the_network_and_signals(pool_without, tcp_port: int) -> None:
    pool = await pool_without("landlock")
    assert pool.features["seccomp"] and not pool.features["landlock"]
    assert (await script(pool, PROBE_NETWORK.format(port=tcp_port))).stdout == "PermissionError\n"
    result = await script(pool, f"""
        import os
        for target in (os.getppid(), {pool.zygote_pid}, -1):
            try:
                os.kill(target, 9)
                print("KILLED")
            except OSError as exc:
                print(type(exc).__name__)
    """)
    assert result.stdout == "PermissionError\n" * 3
    # Without Landlock, the non-dumpable zygote still hides its /proc files from its own uid.
    leak = await script(pool, PROBE_FILE.format(path=f"/proc/{pool.zygote_pid}/environ"))
    assert leak.stdout == "PermissionError\n"


async def test_landlock_alone_blocks_files_and_tcp(pool_without, tcp_port: int) -> None:
    pool = await pool_without("seccomp")
    assert pool.features["landlock"] and not pool.features["seccomp"]
    answer = f"{EXAMPLES}/square/answer.py"
    assert (await script(pool, PROBE_FILE.format(path=answer))).stdout == "PermissionError\n"
    if pool.features["landlock_abi"] >= 4:
        assert (await script(pool, PROBE_NETWORK.format(port=tcp_port))).stdout == "PermissionError\n"
    if pool.features["landlock_abi"] >= 6:
        result = await script(pool, f"""
            import os
            try:
                os.kill({pool.zygote_pid}, 9)
                print("KILLED")
            except OSError as exc:
                print(type(exc).__name__)
        """)
        assert result.stdout == "PermissionError\n"


async def test_without_both_layers_the_probes_do_succeed(pool_without, tcp_port: int) -> None:
    """Control: the probes above detect a hole when there is one (these tests can fail)."""
    pool = await pool_without("seccomp", "landlock")
    assert (await script(pool, PROBE_NETWORK.format(port=tcp_port))).stdout == "CONNECTED\n"
    answer = f"{EXAMPLES}/square/answer.py"
    expected = read_text(answer)[:20] + "\n"
    assert (await script(pool, PROBE_FILE.format(path=answer))).stdout == expected


SAME_UID_PROBES = """
    import ctypes, os, resource, socket
    libc = ctypes.CDLL(None, use_errno=True)
    def t(name, call):
        try:
            call()
            print(name, "DONE")
        except OSError as exc:
            print(name, type(exc).__name__)
    def shm():
        if libc.shmget({key}, 4096, 0o1000 | 0o600) == -1:
            raise OSError(ctypes.get_errno(), "shmget")
        libc.shmctl(libc.shmget({key}, 0, 0), 0, None)
    t("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
    t("shm", shm)
    t("prlimit", lambda: resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE))
    t("chmod", lambda: os.chmod(".", 0o700))
"""


async def test_seccomp_alone_closes_the_same_uid_classes(pool_without) -> None:
    pool = await pool_without("landlock", "ipc_namespace")
    assert pool.features["seccomp"] and not pool.features["landlock"] and not pool.features["ipc_namespace"]
    result = await script(pool, SAME_UID_PROBES.format(key=0x58520000 + os.getpid() % 0xFFFF))
    expected = "".join(f"{name} PermissionError\n" for name in ("unix", "shm", "prlimit", "chmod"))
    assert result.stdout == expected


async def test_without_any_layer_the_same_uid_probes_succeed(pool_without) -> None:
    """Control for the test above: each probe does detect the hole when there is one."""
    pool = await pool_without("seccomp", "landlock", "ipc_namespace")
    result = await script(pool, SAME_UID_PROBES.format(key=0x58530000 + os.getpid() % 0xFFFF))
    assert result.stdout == "unix DONE\nshm DONE\nprlimit DONE\nchmod DONE\n"


def user_namespaces_allowed() -> bool:
    from xqueue_grader.sandbox.namespaces import ipc_namespace_available

    return ipc_namespace_available()


async def test_ipc_namespace_alone_keeps_ipc_objects_per_run(pool_without) -> None:
    if not user_namespaces_allowed():
        pytest.skip("this kernel refuses unprivileged user namespaces: no per-run IPC namespace to test")
    pool = await pool_without("seccomp")
    assert pool.features["ipc_namespace"] is True
    key = 0x58540000 + os.getpid() % 0xFFFF
    common = f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        KEY = {key}
    """
    writer = await script(pool, common + """
        segment = libc.shmget(KEY, 4096, 0o1000 | 0o600)
        ctypes.memmove(libc.shmat(segment, None, 0), b"RUN-ONE", 7)
        print("written" if segment != -1 else "failed")
    """)
    reader = await script(pool, common + """
        print("found" if libc.shmget(KEY, 0, 0) != -1 else "nothing")
    """)
    assert (writer.stdout, reader.stdout) == ("written\n", "nothing\n")
