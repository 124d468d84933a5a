"""A grader that goes away while its long-poll ``get_submission?wait=S`` is open is never handed a
submission: the submission goes to a grader that is still there at once, not after the lease.

The departed grader is a raw socket that sends the request and closes, like a grader pod that is
stopped; the server is the real one (lease 60 s), so "after the lease" would fail every wait here.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import asyncpg
import requests

from tests.integration.clients import GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server.testing import FakeLMS, LoopThread, ServerThread


def open_raw_pull(server: ServerThread, grader: GraderClient, query: str) -> socket.socket:
    """Send ``GET /xqueue/get_submission/?<query>`` with the grader's session; do not read the answer."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    cookie = grader.session.cookies["sessionid"]
    sock.sendall(f"GET /xqueue/get_submission/?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                 f"Cookie: sessionid={cookie}\r\n\r\n".encode())
    return sock


def pull_within(grader: GraderClient, queue: str, seconds: float) -> dict[str, Any] | None:
    item: dict[str, Any] | None = wait_until_blocking(lambda: grader.pull(queue), seconds, f"a submission in {queue}")
    return item


def metric(server: ServerThread, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_work_goes_to_a_waiting_grader_not_to_one_that_left(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    gone_grader, live_grader = GraderClient(server), GraderClient(server)
    gone = open_raw_pull(server, gone_grader, "queue_name=test-pull&wait=20")
    time.sleep(0.5)  # it is the longest waiting grader now...
    gone.close()  # ...and leaves
    time.sleep(0.2)
    result: dict[str, Any] = {}

    def long_poll() -> None:
        started = time.monotonic()
        result["item"] = live_grader.pull("test-pull", wait=10)
        result["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=long_poll)
    waiter.start()
    time.sleep(0.5)
    submitted = time.monotonic()
    LMSClient(server).submit("test-pull", fake_lms.callback_url("lp-gone"), "for a live grader")
    waiter.join(timeout=15)
    handed_over = time.monotonic() - submitted
    print(f"\nsubmit -> waiting grader has it: {handed_over:.3f} s (a departed grader waited longer)")
    assert result["item"] is not None and result["item"]["xqueue_body"] == "for a live grader"
    assert handed_over < 1.5, "the waiting grader was not woken at once"


def test_work_is_not_leased_to_a_grader_that_left(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    gone_grader, later_grader = GraderClient(server), GraderClient(server)
    gone = open_raw_pull(server, gone_grader, "queue_name=test-pull&wait=20")
    time.sleep(0.5)
    gone.close()
    time.sleep(0.2)
    LMSClient(server).submit("test-pull", fake_lms.callback_url("lp-gone-2"), "still here")
    time.sleep(0.5)  # time enough for a departed waiter to have claimed it
    item = later_grader.pull("test-pull")
    assert item is not None and item["xqueue_body"] == "still here"


class TableLock:
    """Holds ``LOCK TABLE submissions`` in an open transaction, so a claim blocks until released."""

    def __init__(self, database_url: str) -> None:
        self.thread = LoopThread("table-lock")
        self.conn: asyncpg.Connection = self.thread.call(asyncpg.connect(database_url))
        self.transaction = self.conn.transaction()

    def lock(self) -> None:
        async def go() -> None:
            await self.transaction.start()
            await self.conn.execute("LOCK TABLE submissions IN EXCLUSIVE MODE")
        self.thread.call(go())

    def someone_waits(self) -> bool:
        return bool(self.thread.call(self.conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = 'submissions'::regclass AND NOT granted")))

    def release(self) -> None:
        self.thread.call(self.transaction.commit())

    def fetchrow(self, sql: str, *args: Any) -> Any:
        return self.thread.call(self.conn.fetchrow(sql, *args))

    def close(self) -> None:
        self.thread.call(self.conn.close())
        self.thread.close()


def test_a_claim_made_for_a_grader_that_left_meanwhile_is_released(xqueue_factory: Any,
                                                                      fake_lms: FakeLMS) -> None:
    # Sweeps and housekeeping run once at start-up and then not again during the test, so the only
    # statement that can wait for the table lock is the claim.
    server = xqueue_factory(sweep_interval_seconds=3600, housekeeping_interval_seconds=3600)
    LMSClient(server).submit("test-pull", fake_lms.callback_url("mid-claim"), "claimed for nobody")
    gone_grader, later_grader = GraderClient(server), GraderClient(server)
    time.sleep(0.3)
    table = TableLock(server.settings.database_url or "")
    try:
        table.lock()
        time.sleep(0.2)
        assert not table.someone_waits()
        gone = open_raw_pull(server, gone_grader, "queue_name=test-pull")
        # the server's claim is blocked on the lock
        wait_until_blocking(table.someone_waits, 10, "the server's claim to wait for the lock", interval=0.02)
        gone.close()
        time.sleep(0.3)
        table.release()  # the claim goes through now, for a grader that is no longer there
        # Only then does the other grader pull: asking at once would race the released claim for the
        # row (under load its statement may run first and take the row, and the claim for nobody
        # finds nothing, which is fine but not what this test is about).
        wait_until_blocking(lambda: metric(server, "xqueue_pulls_released_total") == 1, 10,
                            "the claim made for the departed grader to be released", interval=0.05)
        item = pull_within(later_grader, "test-pull", 2.0)
        assert item is not None and item["xqueue_body"] == "claimed for nobody"
        submission_id = json.loads(item["xqueue_header"])["submission_id"]
        row = table.fetchrow("SELECT pull_count FROM submissions WHERE id = $1", submission_id)
        assert row["pull_count"] == 1  # the hand-out that never arrived is not counted as a pull
    finally:
        table.close()
    assert metric(server, "xqueue_pulls_released_total") == 1
    assert metric(server, "xqueue_lease_expiries_total") == 0
