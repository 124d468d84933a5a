"""Submission lifecycle rules on a real server and database: claims, leases, fencing, poison,
durable delivery, long-poll, bulk calls, restarts."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.integration.clients import GRADE, GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server.protocol import FAILURE_NOTICE_BODY
from xqueue_server.testing import FakeLMS, ServerThread


def test_concurrent_pullers_never_get_the_same_submission(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    lms = LMSClient(server)
    total = 200
    for i in range(total):
        lms.submit("test-pull", fake_lms.callback_url(f"c{i}"), f"b{i}")
    pulled: list[int] = []
    lock = threading.Lock()

    def puller() -> None:
        grader = GraderClient(server)
        while True:
            item = grader.pull("test-pull")
            if item is None:
                return
            with lock:
                pulled.append(json.loads(item["xqueue_header"])["submission_id"])

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        for future in [pool.submit(puller) for _ in range(32)]:
            future.result()
    counts = Counter(pulled)
    assert len(pulled) == total
    assert max(counts.values()) == 1


def test_stale_pull_key_is_rejected_after_a_re_pull(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(lease_seconds=0.4)
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("s"))
    slow, fast = GraderClient(server), GraderClient(server)
    first = slow.pull("test-pull")
    assert first is not None
    assert fast.pull("test-pull") is None  # hidden while the lease is valid
    time.sleep(0.5)
    second = fast.pull("test-pull")
    assert second is not None
    first_key = json.loads(first["xqueue_header"])["submission_key"]
    assert json.loads(second["xqueue_header"])["submission_key"] != first_key
    stale = slow.put_result(first["xqueue_header"], GRADE)
    assert stale == {"return_code": 1, "content": "Incorrect key for submission"}
    assert fast.put_result(second["xqueue_header"], GRADE) == {"return_code": 0, "content": ""}
    fake_lms.wait_for(lambda cbs: len([c for c in cbs if c.xqueue_header["lms_key"] == key]) == 1)


def test_dead_graders_submission_comes_back_after_its_lease(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(lease_seconds=0.5)
    LMSClient(server).submit("test-pull", fake_lms.callback_url("d"), "work")
    dead = GraderClient(server)
    assert dead.pull("test-pull") is not None  # ...and this grader never answers
    survivor = GraderClient(server)
    assert survivor.queue_length("test-pull")["content"] == 0
    wait_until_blocking(lambda: survivor.queue_length("test-pull")["content"] == 1, 5, "the survivor to see one queued")
    item = survivor.pull("test-pull")
    assert item is not None and item["xqueue_body"] == "work"


def test_repeated_put_with_the_same_key_is_accepted_once(xqueue: ServerThread, queue_name: str,
                                                          fake_lms: FakeLMS) -> None:
    key, _ = LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("r"))
    grader = GraderClient(xqueue)
    item = grader.pull(queue_name)
    assert item is not None
    assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0
    assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0  # a retried request
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs))
    time.sleep(0.3)
    assert len(fake_lms.for_key(key)) == 1


def test_poison_submission_is_retired_with_upstreams_failure_notice(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(lease_seconds=0.2, max_pulls=2, sweep_interval_seconds=0.1)
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("poison"))
    grader = GraderClient(server)
    for _pull in range(2):
        wait_until_blocking(lambda: grader.queue_length("test-pull")["content"] == 1, 5, "one queued submission")
        assert grader.pull("test-pull") is not None  # the grader crashes and never answers
    callbacks = fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs), timeout=10)
    notice = next(c for c in callbacks if c.xqueue_header["lms_key"] == key)
    assert notice.raw_body == FAILURE_NOTICE_BODY
    assert notice.xqueue_body == {
        "correct": None, "score": 0,
        "msg": '<div class="capa_alert">Your submission could not be graded. Please recheck your submission and '
               "try again. If the problem persists, please notify the course staff.</div>"}
    time.sleep(0.3)
    assert grader.pull("test-pull") is None
    assert grader.queue_length("test-pull")["content"] == 0


def test_lms_down_still_gets_every_grade_and_put_result_stays_fast(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(callback_backoff_base_seconds=0.05, callback_backoff_max_seconds=0.3,
                            callback_timeout_seconds=2)
    fake_lms.status = 503
    lms, grader = LMSClient(server), GraderClient(server)
    keys = [lms.submit("test-pull", fake_lms.callback_url(f"down{i}"))[0] for i in range(20)]
    slowest_put = 0.0
    for _ in keys:
        item = grader.pull("test-pull")
        assert item is not None
        started = time.monotonic()
        assert grader.put_result(item["xqueue_header"], GRADE) == {"return_code": 0, "content": ""}
        slowest_put = max(slowest_put, time.monotonic() - started)
    wait_until_blocking(lambda: fake_lms.attempts >= 40, 15, "40 callback attempts")  # the outbox keeps trying
    assert fake_lms.callbacks == []
    # Far below the LMS timeout: put_result never waits for the LMS.
    assert slowest_put < 1.0
    fake_lms.status = 200
    fake_lms.wait_for(lambda cbs: {c.xqueue_header["lms_key"] for c in cbs} >= set(keys), timeout=15)


def test_a_hanging_lms_does_not_block_put_result(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(callback_timeout_seconds=5)
    fake_lms.delay = 4.0
    LMSClient(server).submit("test-pull", fake_lms.callback_url("hang"))
    grader = GraderClient(server)
    item = grader.pull("test-pull")
    assert item is not None
    started = time.monotonic()
    assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0
    assert time.monotonic() - started < 2.0


def run_admin(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XQUEUE_DATABASE_URL": server.settings.database_url or ""}
    return subprocess.run([sys.executable, "-m", "xqueue_server.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_undeliverable_callback_is_dead_lettered_and_can_be_redelivered(xqueue_factory: Any,
                                                                        fake_lms: FakeLMS) -> None:
    server = xqueue_factory(callback_backoff_base_seconds=0.05, callback_backoff_max_seconds=0.1,
                            callback_horizon_seconds=0.5, sweep_interval_seconds=0.1)
    fake_lms.status = 500
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("dead"))
    grader = GraderClient(server)
    item = grader.pull("test-pull")
    assert item is not None
    grader.put_result(item["xqueue_header"], GRADE)
    wait_until_blocking(lambda: "#" in run_admin(server, "dead-letters").stdout, 10, "a dead letter", interval=0.3)
    listing = run_admin(server, "dead-letters")
    assert "kind=grade" in listing.stdout and "status_code=500" in listing.stdout
    import requests

    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert "xqueue_callback_dead_lettered_total 1.0" in metrics
    fake_lms.status = 200
    redeliver = run_admin(server, "redeliver", "--all")
    assert "re-queued 1 callback" in redeliver.stdout, redeliver.stderr
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs), timeout=10)
    assert "no dead-lettered callbacks" in run_admin(server, "dead-letters").stdout


def test_long_poll_returns_as_soon_as_work_arrives(xqueue: ServerThread, queue_name: str,
                                                   fake_lms: FakeLMS) -> None:
    grader = GraderClient(xqueue)
    result: dict[str, Any] = {}

    def wait_for_work() -> None:
        started = time.monotonic()
        result["item"] = grader.pull(queue_name, wait=20)
        result["elapsed"] = time.monotonic() - started

    waiter = threading.Thread(target=wait_for_work)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # really waiting: the queue is empty
    LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("lp"), "late work")
    waiter.join(timeout=10)
    assert result["item"]["xqueue_body"] == "late work"
    assert result["elapsed"] < 10  # woken by the notification, not by the 20 s timeout


def test_long_poll_times_out_with_the_empty_reply(xqueue: ServerThread, queue_name: str) -> None:
    started = time.monotonic()
    reply = GraderClient(xqueue).get_submission(queue_name, wait=0.5)
    assert reply == {"return_code": 1, "content": f"Queue '{queue_name}' is empty"}
    assert time.monotonic() - started >= 0.45


def test_bulk_pull_and_bulk_put(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    lms = LMSClient(xqueue)
    keys = [lms.submit(queue_name, fake_lms.callback_url(f"bulk{i}"), f"b{i}")[0] for i in range(5)]
    grader = GraderClient(xqueue)
    reply = grader.get_submission(queue_name, max=3)
    assert reply["return_code"] == 0
    items = json.loads(reply["content"])
    assert [i["xqueue_body"] for i in items] == ["b0", "b1", "b2"]
    stale = json.dumps({"submission_id": json.loads(items[0]["xqueue_header"])["submission_id"],
                        "submission_key": "bad"})
    results = [{"xqueue_header": i["xqueue_header"], "xqueue_body": json.dumps(GRADE)} for i in items]
    results.append({"xqueue_header": stale, "xqueue_body": "{}"})
    put = grader._request("POST", "/xqueue/put_result/", data={"results": json.dumps(results)})
    assert put["return_code"] == 0
    assert put["content"] == [{"return_code": 0, "content": ""}] * 3 + [
        {"return_code": 1, "content": "Incorrect key for submission"}]
    fake_lms.wait_for(lambda cbs: {c.xqueue_header["lms_key"] for c in cbs} >= set(keys[:3]))
    assert grader.queue_length(queue_name)["content"] == 2


def test_server_restart_mid_load_loses_nothing(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    first = xqueue_factory()
    database_url = first.settings.database_url
    lms = LMSClient(first)
    keys = [lms.submit("test-pull", fake_lms.callback_url(f"rs{i}"))[0] for i in range(30)]
    grader = GraderClient(first)
    pulled_before = [grader.pull("test-pull") for _ in range(10)]
    for item in pulled_before[:5]:
        assert item is not None
        grader.put_result(item["xqueue_header"], GRADE)
    first.stop()
    # A new server process on the same database, with a short lease so unanswered pulls come back.
    second = xqueue_factory(database_url=database_url, lease_seconds=0.5)
    grader = GraderClient(second)
    for item in pulled_before[5:]:
        assert item is not None
        grader.put_result(item["xqueue_header"], GRADE)  # pulls from before the restart still count

    def all_graded() -> bool:
        """One step of grading what is left; True once the queue is empty and every grade arrived."""
        item = grader.pull("test-pull", wait=1)
        if item is not None:
            grader.put_result(item["xqueue_header"], GRADE)
            return False
        if grader.queue_length("test-pull")["content"] != 0:
            return False
        return {c.xqueue_header["lms_key"] for c in fake_lms.callbacks} >= set(keys)

    wait_until_blocking(all_graded, 20, "every submission graded and called back", interval=0)
    received = {c.xqueue_header["lms_key"] for c in fake_lms.callbacks}
    assert received >= set(keys), f"missing {len(set(keys) - received)} grades"


def test_sessions_are_valid_on_every_replica(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    replica_a = xqueue_factory()
    replica_b = xqueue_factory(database_url=replica_a.settings.database_url)
    lms = LMSClient(replica_a)
    lms._login()
    lms.url = replica_b.url  # same cookie jar, other replica
    _, (code, _) = lms.submit("test-pull", fake_lms.callback_url("rep"))
    assert code == 0
    response = lms.session.get(f"{replica_b.url}/xqueue/get_queuelen/", params={"queue_name": "test-pull"},
                               allow_redirects=False, timeout=10)
    assert response.json() == {"return_code": 0, "content": 1}


@pytest.mark.parametrize("wait", ["abc", "-1", "nan"])
def test_bad_wait_parameter_is_a_clear_error(xqueue: ServerThread, queue_name: str, wait: str) -> None:
    reply = GraderClient(xqueue).get_submission(queue_name, wait=wait)
    assert reply["return_code"] == 1
    assert "wait" in reply["content"]
