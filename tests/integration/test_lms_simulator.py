"""``python -m xqueue_server.lms_simulator`` (the in-cluster LMS of tier C and ``make cluster-demo``) on
127.0.0.1: its own process against a real server, a real grader daemon for examples/course, and a
hand-driven grader for replies the LMS must reject."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.waiting import wait_until_blocking
from xqueue_server import demo, lms_simulator
from xqueue_server.local_pg import LocalPostgres, free_port
from xqueue_server.testing import ServerThread, create_database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(postgres: LocalPostgres) -> Iterator[ServerThread]:
    server = ServerThread.start(create_database(postgres.url), queues=(demo.QUEUE, "manual"))
    yield server
    server.stop()


@pytest.fixture
def simulator(server: ServerThread, tmp_path: Path) -> Iterator[str]:
    password_file = tmp_path / "lms-password"
    password_file.write_text(server.lms.password + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "simulator.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "xqueue_server.lms_simulator", "--server-url", server.url,
         "--password-file", str(password_file), "--advertise-url", url, "--listen-host", "127.0.0.1",
         "--listen-port", str(port), "--queue", demo.QUEUE, "--log-format", "text"],
        cwd=REPO, env={**os.environ}, stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            try:
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    return True
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, (tmp_path / "simulator.log").read_text()
            return False

        wait_until_blocking(healthy, 30, "the simulator's /healthz", interval=0.1,
                            detail=lambda: (tmp_path / "simulator.log").read_text())
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / "simulator.log").read_text()
        log.close()
    assert server.lms.password not in (tmp_path / "simulator.log").read_text()


def results_when(url: str, done: Any, timeout: float = 90) -> list[dict[str, Any]]:
    def finished() -> tuple[list[dict[str, Any]]] | None:
        results = requests.get(f"{url}/simulator/results", timeout=10).json()["submissions"]
        return (list(results),) if done(results) else None  # a tuple: an empty list of results can be done too

    return list(wait_until_blocking(finished, timeout, "the simulator's results", interval=0.2)[0])


def test_pure_pieces_follow_edx_platform() -> None:
    assert lms_simulator.queue_key(1, "20261125000000", "student", "block_2_1") == hashlib.md5(
        b"120261125000000studentblock_2_1").hexdigest()
    assert lms_simulator.callback_url("http://lms.ns.svc:8000/", "u1", "b1") == (
        "http://lms.ns.svc:8000/courses/course-v1:xqueue-k8s+demo+2026/xqueue/u1/b1/score_update")
    assert lms_simulator.parse_score_msg('{"correct": true, "score": 1, "msg": "<p>ok&nbsp;</p>"}')[1] is None
    lacking = lms_simulator.parse_score_msg('{"correct": true, "score": 1}')
    assert lacking == (None, "xqueue_body lacks correct, score or msg")
    assert lms_simulator.parse_score_msg("oops")[1] == "xqueue_body is not JSON"
    not_xml = lms_simulator.parse_score_msg('{"correct": 1, "score": 1, "msg": "<p>"}')[1]
    assert not_xml is not None and not_xml.startswith("msg is not XML")
    with pytest.raises(ValueError):
        lms_simulator.grader_payload_for("../etc")


def test_submits_like_the_lms_and_records_real_grades(server: ServerThread, simulator: str, tmp_path: Path) -> None:
    grader = demo.start_grader(server, REPO / "examples" / "course", tmp_path)
    try:
        items = [{"label": s.label, "code": s.code, "problem": demo.DEMO_PROBLEM} for s in demo.SUBMISSIONS]
        reply = requests.post(f"{simulator}/simulator/submit", json={"submissions": items}, timeout=60).json()
        assert [(s["label"], s["error"]) for s in reply["submitted"]] == [
            ("correct", None), ("incorrect", None), ("broken", None)]
        results = results_when(simulator, lambda rs: all(r["callbacks"] for r in rs))
    finally:
        grader.send_signal(signal.SIGTERM)
        grader.wait(timeout=30)
    graded = {r["label"]: r for r in results}
    assert {label: (r["callbacks"][0]["correct"], r["callbacks"][0]["score"]) for label, r in graded.items()} == {
        "correct": (True, 1.0), "incorrect": (False, 0.0), "broken": (False, 0)}
    for r in results:
        callback = r["callbacks"][0]
        assert callback["problem"] is None and callback["header_verbatim"] is True
        assert callback["path"].endswith("/score_update") and 0 < r["latency_seconds"] < 60
    assert "SyntaxError" in graded["broken"]["callbacks"][0]["msg"]


def test_records_replies_the_lms_would_reject_and_refuses_bad_callbacks(server: ServerThread, simulator: str) -> None:
    reply = requests.post(f"{simulator}/simulator/submit", timeout=30,
                          json={"queue": "manual", "submissions": [{"label": "x", "problem": "square", "code": "1"}]})
    assert reply.json()["submitted"][0]["error"] is None
    grader = requests.Session()
    grader.post(f"{server.url}/xqueue/login/", data={"username": server.grader.username,
                                                      "password": server.grader.password}, timeout=10)
    pulled = grader.get(f"{server.url}/xqueue/get_submission/", params={"queue_name": "manual"}, timeout=10).json()
    header = json.loads(pulled["content"])["xqueue_header"]
    put = grader.post(f"{server.url}/xqueue/put_result/", timeout=10,
                      data={"xqueue_header": header, "xqueue_body": json.dumps({"score": 1})}).json()
    assert put["return_code"] == 0
    results = results_when(simulator, lambda rs: rs and rs[0]["callbacks"], timeout=30)
    assert results[0]["callbacks"][0]["problem"] == "xqueue_body lacks correct, score or msg"
    assert "correct" not in results[0]["callbacks"][0]
    # The courseware view's 404s, and a bad submit request.
    assert requests.post(f"{simulator}/courses/c/xqueue/u/b/score_update", data={"xqueue_body": "{}"},
                         timeout=10).status_code == 404
    assert requests.post(f"{simulator}/courses/c/xqueue/u/b/score_update", timeout=10,
                         data={"xqueue_header": "{}", "xqueue_body": "{}"}).status_code == 404
    assert requests.post(f"{simulator}/simulator/submit", json={"submissions": [{"problem": "a/b"}]},
                         timeout=10).status_code == 400
    assert requests.get(f"{simulator}/simulator/results", timeout=10).json()["rejected_callbacks"] == 2
