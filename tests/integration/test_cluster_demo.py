"""``python -m xqueue_server.cluster_demo`` (the kind demo Job) end to end on 127.0.0.1: a real server,
a real grader daemon for examples/course, and the demo as its own process, as in the Job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xqueue_server import demo
from xqueue_server.local_pg import LocalPostgres, free_port
from xqueue_server.testing import ServerThread, create_database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_server(postgres: LocalPostgres) -> Iterator[ServerThread]:
    server = ServerThread.start(create_database(postgres.url), queues=(demo.QUEUE,))
    yield server
    server.stop()


def run_cluster_demo(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xqueue_server.cluster_demo", *args], cwd=REPO,
                          env={**os.environ, "POD_IP": ""}, capture_output=True, text=True, timeout=timeout,
                          check=False)


def test_cluster_demo_submits_like_the_lms_and_checks_the_three_grades(demo_server: ServerThread,
                                                                       tmp_path: Path) -> None:
    grader = demo.start_grader(demo_server, REPO / "examples" / "course", tmp_path)
    try:
        password_file = tmp_path / "lms-password"
        password_file.write_text(demo_server.lms.password + "\n")  # a trailing newline is not part of it
        result = run_cluster_demo("--server-url", demo_server.url, "--queue", demo.QUEUE,
                                  "--username", demo_server.lms.username, "--password-file", str(password_file),
                                  "--listen-port", "0", "--advertise-host", "127.0.0.1", "--timeout", "120")
    finally:
        grader.send_signal(signal.SIGTERM)
        try:
            grader.wait(timeout=30)
        except subprocess.TimeoutExpired:
            grader.kill()
    grader_log = (tmp_path / "grader.log").read_text(errors="replace")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + grader_log[-2000:]
    out = result.stdout
    assert "callbacks to http://127.0.0.1:" in out
    assert "[correct] score=1.0 correct=True" in out
    assert "[incorrect] score=0.0 correct=False" in out
    assert "[broken] score=0 correct=False" in out
    assert "SyntaxError" in out
    assert "demo passed" in out


def test_cluster_demo_fails_when_no_grader_answers_in_time(demo_server: ServerThread, tmp_path: Path) -> None:
    password_file = tmp_path / "lms-password"
    password_file.write_text(demo_server.lms.password)
    result = run_cluster_demo("--server-url", demo_server.url, "--password-file", str(password_file),
                              "--listen-port", "0", "--advertise-host", "127.0.0.1", "--timeout", "3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[correct] no grade received" in result.stdout
    assert "demo FAILED" in result.stderr


def test_cluster_demo_gives_up_on_an_unreachable_server_within_its_timeout(tmp_path: Path) -> None:
    password_file = tmp_path / "lms-password"
    password_file.write_text("secret")
    result = run_cluster_demo("--server-url", f"http://127.0.0.1:{free_port()}", "--password-file",
                              str(password_file), "--listen-port", "0", "--advertise-host", "127.0.0.1",
                              "--timeout", "5", timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not reachable yet" in result.stdout  # it retried...
    assert "could not submit" in result.stderr  # ...and gave up


def test_server_image_modules_need_neither_requests_nor_the_other_packages() -> None:
    # The server image (images/server/Dockerfile) holds xqueue_server and its runtime dependencies only.
    code = ("import sys\n"
            "for name in ('requests', 'kopf', 'kubernetes', 'xqueue_grader', 'coursegrader_operator', 'pytest'):\n"
            "    sys.modules[name] = None\n"
            "import xqueue_server.__main__, xqueue_server.cli, xqueue_server.cluster_demo, xqueue_server.demo\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
