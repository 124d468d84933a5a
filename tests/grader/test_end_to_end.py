"""End to end with the real XQueue server and PostgreSQL: an LMS-style submit, the grader daemon as
a real subprocess, and the grade arriving at a fake LMS callback - for correct, incorrect, error,
timeout and limit-exceeded submissions, and across a SIGTERM in the middle of grading."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.integration.clients import LMSClient
from xqueue_grader.launch import grader_env, start_subprocess
from xqueue_server.testing import Callback, FakeLMS, ServerThread

from .helpers import EXAMPLES, SESSION_UID, SQUARE, free_port, lms_body, wait_until_blocking

SQUARE_OK = "def square(x):\n    return x * x\n"


def create_queue(server: ServerThread, name: str) -> None:
    response = requests.put(f"{server.url}/api/v1/queues/{name}", auth=(server.admin.username, server.admin.password),
                            timeout=10)
    assert response.status_code in (200, 201), response.text


@pytest.fixture
def grader_process(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], int]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(server: ServerThread, queue: str, *, slots: int = 2, wall: float = 3, name: str = "grader",
              drain: float = 30) -> tuple[subprocess.Popen[bytes], int]:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({"http_host": "127.0.0.1", "sandbox_uid": SESSION_UID,
                                          "long_poll_seconds": 2, "poll_min_seconds": 0.2}))
        port = free_port()
        env = grader_env(server_url=server.url, queue=queue, username=server.grader.username,
                         password=server.grader.password, grader_root=EXAMPLES, http_port=port, slots=slots,
                         drain_seconds=drain, limits={"wall_seconds": wall, "cpu_seconds": 2},
                         config_file=str(config))
        proc = start_subprocess(env, stderr=open(tmp_path / f"{name}.log", "wb"))
        started.append(proc)
        return proc, port

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def body_of(callback: Callback) -> dict[str, Any]:
    assert isinstance(callback.xqueue_body, dict), callback.raw_body
    return callback.xqueue_body


def test_lms_submissions_are_graded_and_called_back(xqueue: ServerThread, fake_lms: FakeLMS, queue_name: str,
                                                    grader_process: Any, tmp_path: Path) -> None:
    lms = LMSClient(xqueue)
    cases = {
        "correct": SQUARE_OK,
        "incorrect": "def square(x):\n    return x + x\n",
        "error": "def square(x)\n    return x\n",
        "timeout": SQUARE_OK + "import time\ntime.sleep(100)\n",
        "memory": SQUARE_OK + "hog = bytearray(10**10)\n",
    }
    keys: dict[str, str] = {}
    for case, code in cases.items():
        key, (code_ok, content) = lms.submit(queue_name, fake_lms.callback_url(case), lms_body(SQUARE, code))
        assert code_ok == 0, content
        keys[case] = key
    _proc, port = grader_process(xqueue, queue_name)
    fake_lms.wait_for(lambda cbs: len({c.xqueue_header.get("lms_key") for c in cbs} & set(keys.values())) == 5,
                      timeout=60)
    got = {case: fake_lms.for_key(key) for case, key in keys.items()}
    assert all(len(callbacks) == 1 for callbacks in got.values()), got

    correct = body_of(got["correct"][0])
    assert (correct["correct"], correct["score"]) == (True, 1.0)
    assert "CORRECT" in correct["msg"] and 'class="result-output result-correct"' in correct["msg"]

    incorrect = body_of(got["incorrect"][0])
    assert (incorrect["correct"], incorrect["score"]) == (False, 0.2)
    assert "Correct output:" in incorrect["msg"]

    error = body_of(got["error"][0])
    assert (error["correct"], error["score"]) == (False, 0)
    assert "ERROR" in error["msg"] and "SyntaxError" in error["msg"]

    timeout = body_of(got["timeout"][0])
    assert timeout["score"] == 0
    assert "Your code took too long to run and was stopped after 3 seconds." in timeout["msg"]

    memory = body_of(got["memory"][0])
    assert memory["score"] == 0
    assert "Your code used more memory than allowed (256 MiB)." in memory["msg"]

    # The callback carries the LMS's original header untouched.
    header = got["correct"][0].xqueue_header
    assert header["lms_callback_url"] == fake_lms.callback_url("correct") and header["queue_name"] == queue_name

    time.sleep(2.5)  # one long-poll period with an empty queue
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "xqgrader_long_poll 1.0" in metrics, "the daemon uses the server's long-poll"
    empty_pulls = next(float(line.split()[-1]) for line in metrics.splitlines()
                       if line.startswith('xqgrader_pulls_total{result="empty"}'))
    assert empty_pulls <= 8, "empty polls are held by the server, not repeated in a loop"
    assert 'xqgrader_submissions_total{outcome="correct"} 1.0' in metrics
    assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    entries = log_entries(tmp_path / "grader.log")
    assert sum(1 for e in entries if e["msg"] == "graded") == 5
    text = (tmp_path / "grader.log").read_text()
    assert xqueue.grader.password not in text and "bytearray(10**10)" not in text


def test_sigterm_during_grading_loses_and_duplicates_nothing(xqueue_factory: Callable[..., ServerThread],
                                                             fake_lms: FakeLMS, grader_process: Any,
                                                             tmp_path: Path) -> None:
    # A short lease, so a lost or unanswered submission would be re-offered (and re-graded) quickly.
    server = xqueue_factory(lease_seconds=3)
    queue = "sigterm-queue"
    create_queue(server, queue)
    lms = LMSClient(server)
    slow = SQUARE_OK + "import time\ntime.sleep(2)\n"
    keys = []
    for i in range(6):
        key, (code, content) = lms.submit(queue, fake_lms.callback_url(f"s{i}"), lms_body(SQUARE, slow))
        assert code == 0, content
        keys.append(key)

    first, _ = grader_process(server, queue, slots=2, wall=6, name="first")
    # Wait until the first grader is in the middle of grading, then stop it.
    def grading() -> bool:
        queued = requests.get(f"{server.url}/api/v1/queues/{queue}/length",
                              auth=(server.admin.username, server.admin.password), timeout=5).json()
        return bool(queued["in_flight"] >= 1)

    wait_until_blocking(grading, 30, "the first grader to pull a submission")
    time.sleep(0.5)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    first_log = log_entries(tmp_path / "first.log")
    graded_by_first = [e for e in first_log if e["msg"] == "graded" and e["delivered"] is True]
    stop_at = next(i for i, e in enumerate(first_log) if e["msg"].startswith("stop requested"))

    grader_process(server, queue, slots=2, wall=6, name="second")
    fake_lms.wait_for(lambda cbs: {c.xqueue_header.get("lms_key") for c in cbs} >= set(keys), timeout=90)
    time.sleep(4)  # longer than the lease: a duplicate delivery would show up now
    counts = {key: len(fake_lms.for_key(key)) for key in keys}
    assert counts == dict.fromkeys(keys, 1), counts
    assert all(body_of(fake_lms.for_key(key)[0])["score"] == 1.0 for key in keys)
    assert graded_by_first, "the first grader delivered grades"
    assert any(first_log.index(e) > stop_at for e in graded_by_first), "in-flight work was finished in the drain"
    assert log_entries(tmp_path / "second.log")


def log_entries(path: Path) -> list[dict[str, Any]]:
    """The grader's log: every line must be one JSON object with ts, level and msg."""
    entries = []
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            assert {"ts", "level", "msg"} <= set(entry), entry
            entries.append(entry)
    return entries
