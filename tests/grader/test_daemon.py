"""The grader daemon against a real HTTP server emulating classic XQueue: pulling rhythm, handlers,
health endpoints, metrics, put retries, and SIGTERM drain of the real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from xqueue_grader.config import GraderConfig
from xqueue_grader.daemon import GraderDaemon
from xqueue_grader.launch import grader_env, start_subprocess
from xqueue_grader.sandbox import SandboxPool

from .fake_xqueue import FakeXQueue
from .helpers import EXAMPLES, SESSION_UID, SQUARE, daemon_config, lms_body, wait_exit, wait_until

SQUARE_OK = "def square(x):\n    return x * x\n"


@pytest.fixture
async def run_daemon(sandbox_pool: SandboxPool) -> AsyncIterator[Any]:
    daemons: list[GraderDaemon] = []

    async def start(config: GraderConfig) -> GraderDaemon:
        daemon = GraderDaemon(config, pool=sandbox_pool)
        await daemon.start()
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        await daemon.shutdown()


async def http_get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split(" ")[0] == name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def test_daemon_grades_submissions_and_reports(fake: FakeXQueue, run_daemon: Any) -> None:
    good = fake.submit(lms_body(SQUARE, SQUARE_OK))
    bad = fake.submit(lms_body(SQUARE, "def square(x):\n    return x\n"))
    broken = fake.submit(lms_body(SQUARE, "def square(x)\n"))
    daemon = await run_daemon(daemon_config(fake))
    await fake.wait_results(3)
    assert fake.result_for(good)[0]["correct"] is True and fake.result_for(good)[0]["score"] == 1.0
    assert fake.result_for(bad)[0]["score"] == pytest.approx(0.2)
    assert "SyntaxError" in fake.result_for(broken)[0]["msg"]
    assert all(set(body) == {"correct", "score", "msg"} for _, body in fake.results)
    status, _ = await http_get(daemon.http_port, "/healthz")
    assert status == 200
    status, body = await http_get(daemon.http_port, "/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    status, text = await http_get(daemon.http_port, "/metrics")
    assert status == 200
    assert metric(text, 'xqgrader_submissions_total{outcome="correct"}') == 1
    assert metric(text, 'xqgrader_submissions_total{outcome="incorrect"}') == 1
    assert metric(text, 'xqgrader_submissions_total{outcome="error"}') == 1
    assert metric(text, 'xqgrader_sandbox_feature{feature="seccomp"}') == 1
    assert metric(text, 'xqgrader_sandbox_feature{feature="landlock"}') == 1
    assert metric(text, "xqgrader_grading_seconds_count") == 3
    assert metric(text, 'xqgrader_put_results_total{result="ok"}') == 3
    assert metric(text, "xqgrader_slots") == 2
    assert fake.logins == 1


async def test_long_poll_picks_up_work_at_once(fake: FakeXQueue, run_daemon: Any) -> None:
    fake.supports_wait = True
    await run_daemon(daemon_config(fake, long_poll_seconds=5, poll_min_seconds=3, poll_max_seconds=3))
    await asyncio.sleep(0.5)
    submitted = time.monotonic()
    fake.submit(lms_body(SQUARE, SQUARE_OK))
    await fake.wait_results(1)
    # Classic polling would sleep 3 s between empty polls; the parked request answers at once.
    assert time.monotonic() - submitted < 2.5
    pulls = [r for r in fake.requests if r.path == "/xqueue/get_submission/"]
    assert all(r.query.get("wait") == "5" for r in pulls)
    assert len(pulls) <= 6


async def test_falls_back_to_polling_when_long_poll_is_unsupported(fake: FakeXQueue, run_daemon: Any) -> None:
    fake.supports_wait = False
    await run_daemon(daemon_config(fake, long_poll_seconds=5, poll_min_seconds=0.2, poll_max_seconds=0.4))
    await asyncio.sleep(2.5)
    pulls = [r for r in fake.requests if r.path == "/xqueue/get_submission/"]
    with_wait = [r for r in pulls if "wait" in r.query]
    assert 3 <= len(with_wait) <= 6  # a few fast empty replies, then no more wait=
    assert "wait" not in pulls[-1].query
    # Backing off between empty polls: two slots at most every 0.2-0.4 s, never a busy loop.
    assert len(pulls) <= 35
    fake.submit(lms_body(SQUARE, SQUARE_OK))
    await fake.wait_results(1, seconds=5)


async def test_custom_handlers_legacy_and_native(fake: FakeXQueue, run_daemon: Any) -> None:
    handlers = [{"HANDLER": "tests.grader.sample_handlers.LegacyClass", "KWARGS": {"expected": "hello"}}]
    await run_daemon(daemon_config(fake, handlers=handlers))
    ok = fake.submit(lms_body(None, "hello"))
    boom = fake.submit(lms_body(None, "boom"))
    skipped = fake.submit(lms_body(None, "skip"))
    wrong = fake.submit(lms_body(None, "bye"))
    await fake.wait_results(2)
    await asyncio.sleep(0.3)
    assert fake.result_for(ok)[0]["correct"] is True
    assert fake.result_for(wrong)[0]["correct"] is False
    assert fake.result_for(boom) == [] and fake.result_for(skipped) == []  # no reply: re-offered later
    assert set(fake.pulled) >= {ok, boom, skipped, wrong}


async def test_native_handler_runs_code_in_the_sandbox(fake: FakeXQueue, run_daemon: Any) -> None:
    await run_daemon(daemon_config(fake, handlers=["tests.grader.sample_handlers:run_it"]))
    right = fake.submit(lms_body(None, "print(6 * 7)"))
    wrong = fake.submit(lms_body(None, "print(41)"))
    hang = fake.submit(lms_body(None, "while True: pass"))
    await fake.wait_results(3, seconds=20)
    assert fake.result_for(right)[0]["correct"] is True
    assert fake.result_for(wrong)[0]["correct"] is False
    assert "stopped: " in fake.result_for(hang)[0]["msg"]


async def test_put_result_is_retried_a_bounded_number_of_times(fake: FakeXQueue, run_daemon: Any) -> None:
    fake.put_failures = 2
    await run_daemon(daemon_config(fake, put_result_attempts=3))
    fake.submit(lms_body(SQUARE, SQUARE_OK))
    await fake.wait_results(1, seconds=20)
    assert fake.count("/xqueue/put_result/") == 3


async def test_not_ready_until_logged_in(fake: FakeXQueue, run_daemon: Any) -> None:
    daemon = await run_daemon(daemon_config(fake, password="wrong", login_retry_seconds=0.2))
    await asyncio.sleep(0.6)
    status, body = await http_get(daemon.http_port, "/readyz")
    assert status == 503 and json.loads(body)["logged_in"] is False
    assert 2 <= fake.logins <= 6  # retried on a bounded rhythm, not in a tight loop
    assert fake.count("/xqueue/get_submission/") == 0


# -- the real process ----------------------------------------------------------------------------


def start_grader(fake: FakeXQueue, tmp_path: Path, **env_overrides: str) -> subprocess.Popen[bytes]:
    config_file = tmp_path / "grader.yaml"
    config_file.write_text(yaml.safe_dump({
        "http_host": "127.0.0.1", "sandbox_uid": SESSION_UID, "long_poll_seconds": 0,
        "poll_min_seconds": 0.1, "poll_max_seconds": 0.3,
    }))
    env = grader_env(server_url=fake.url, queue=fake.queue, username=fake.username, password=fake.password,
                     grader_root=EXAMPLES, slots=1, limits={"wall_seconds": 8, "cpu_seconds": 4},
                     config_file=str(config_file))
    env.update(env_overrides)
    log = open(tmp_path / "grader.log", "wb")
    return start_subprocess(env, stderr=log)


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "grader.log").read_text().splitlines() if line.strip()]


async def test_sigterm_finishes_in_flight_grading_then_exits_zero(fake: FakeXQueue, tmp_path: Path) -> None:
    slow = fake.submit(lms_body(SQUARE, "import time\ntime.sleep(2)\n" + SQUARE_OK))
    proc = start_grader(fake, tmp_path)
    try:
        await wait_until(lambda: slow in fake.pulled, 20, "the slow submission to be pulled")
        await asyncio.sleep(0.3)  # it is being graded now
        proc.send_signal(signal.SIGTERM)
        later = fake.submit(lms_body(SQUARE, SQUARE_OK))
        assert await wait_exit(proc, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [body["score"] for body in fake.result_for(slow)] == [1.0]  # finished and put, once
    assert later not in fake.pulled  # nothing new pulled after SIGTERM
    lines = log_lines(tmp_path)
    assert any(line["msg"].startswith("stop requested") for line in lines)
    assert all(fake.password not in json.dumps(line) for line in lines)
    assert all("time.sleep" not in json.dumps(line) for line in lines)  # no student code in logs


async def test_drain_deadline_abandons_work_and_still_exits_zero(fake: FakeXQueue, tmp_path: Path) -> None:
    stuck = fake.submit(lms_body(SQUARE, "import time\ntime.sleep(6)\n" + SQUARE_OK))
    proc = start_grader(fake, tmp_path, XQGRADER_DRAIN_SECONDS="1")
    try:
        await wait_until(lambda: stuck in fake.pulled, 20, "the submission to be pulled")
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
        assert time.monotonic() - stopped < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    assert fake.result_for(stuck) == []  # the server re-offers it after the lease
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _uid_of(pid) == SESSION_UID
                 and _ppid_chain_has(pid, proc.pid)]
    assert leftovers == []


def test_bad_configuration_exits_with_status_2(tmp_path: Path) -> None:
    proc = start_subprocess({"XQGRADER_QUEUE": "q", "XQGRADER_SLOTS": "zero"},
                            stderr=open(tmp_path / "err", "wb"))
    assert proc.wait(30) == 2
    assert "XQGRADER_SLOTS must be a number" in (tmp_path / "err").read_text()


def _uid_of(pid: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _ppid_chain_has(pid: str, ancestor: int) -> bool:
    current = int(pid)
    for _ in range(50):
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            return False
        current = int(stat[stat.rfind(")") + 2:].split()[1])
        if current == ancestor:
            return True
        if current <= 1:
            return False
    return False
