"""The cheap full cycle keeps its guarantees: a grade's callback is claimed by put_result and sent at
once by the same process, the outbox row stays the fallback (a process that dies before sending,
an LMS host at its bound), and a session remembered by a replica is forgotten when its account
changes by any route, plain SQL included."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import requests

from tests.integration.clients import GRADE, GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server import delivery
from xqueue_server.db import Database
from xqueue_server.testing import FakeLMS, ServerThread


def fetch(server: ServerThread, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(server.settings.database_url)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return server.run(run())


def test_grade_is_delivered_inline_with_one_attempt(xqueue_factory: Callable[..., ServerThread],
                                                   fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("inline"))
    grader = GraderClient(server)
    item = grader.pull("test-pull")
    assert item is not None
    assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0
    fake_lms.wait_for(lambda calls: any(c.xqueue_header["lms_key"] == key for c in calls))
    submission_id = json.loads(item["xqueue_header"])["submission_id"]

    def marked() -> bool:
        rows = fetch(server, "SELECT c.state, c.attempts, s.state AS submission_state FROM callbacks c "
                             "JOIN submissions s ON s.id = c.submission_id WHERE s.id = $1", submission_id)
        return rows == [{"state": "delivered", "attempts": 1, "submission_state": "delivered"}]

    wait_until_blocking(marked, 10, "the callback and its submission marked delivered")
    assert len(fake_lms.for_key(key)) == 1


def test_a_claimed_callback_its_process_never_sent_is_delivered_by_the_outbox(
        xqueue_factory: Callable[..., ServerThread], fake_lms: FakeLMS) -> None:
    """A process that dies between put_result's commit and the first attempt: the row was stored
    claimed, becomes due when the claim runs out, and the outbox delivers it."""
    server = xqueue_factory(callback_timeout_seconds=1.0)
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("orphan"))
    item = GraderClient(server).pull("test-pull")
    assert item is not None
    header = json.loads(item["xqueue_header"])

    async def record_and_vanish() -> tuple[str, Any]:
        db = await Database.connect(server.settings.database_url or "", 1, 2)
        try:  # claimed for inline delivery for 1 s, and nobody calls deliver_now
            return await db.record_result(header["submission_id"], header["submission_key"], json.dumps(GRADE),
                                          None, 1.0)
        finally:
            await db.close()

    started = time.monotonic()
    outcome, claimed = server.run(record_and_vanish())
    assert outcome == "recorded" and claimed is not None and claimed.attempts == 1
    fake_lms.wait_for(lambda calls: any(c.xqueue_header["lms_key"] == key for c in calls), timeout=15)
    assert time.monotonic() - started >= 0.9  # not before the claim ran out
    wait_until_blocking(lambda: fetch(server, "SELECT state, attempts FROM callbacks WHERE id = $1", claimed.id)
                        == [{"state": "delivered", "attempts": 2}], 10, "the callback delivered at the 2nd attempt")


def test_callbacks_over_the_host_bound_reach_the_lms_once_each(xqueue_factory: Callable[..., ServerThread],
                                                                fake_lms: FakeLMS) -> None:
    server = xqueue_factory(callback_per_host_concurrency=1)
    fake_lms.delay = 0.2  # each delivery holds the host's single slot for a while
    lms, grader = LMSClient(server), GraderClient(server)
    keys = [lms.submit("test-pull", fake_lms.callback_url(f"bound{i}"))[0] for i in range(6)]
    for _ in keys:
        item = grader.pull("test-pull")
        assert item is not None
        assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0
    fake_lms.wait_for(lambda calls: {c.xqueue_header["lms_key"] for c in calls} >= set(keys), timeout=20)
    fake_lms.delay = 0.0
    counts = Counter(c.xqueue_header["lms_key"] for c in fake_lms.callbacks)
    assert all(counts[k] == 1 for k in keys), counts


def test_a_remembered_session_is_refused_right_after_a_plain_sql_change(
        xqueue_factory: Callable[..., ServerThread]) -> None:
    first = xqueue_factory()
    replica = xqueue_factory(database_url=first.settings.database_url)
    session = requests.Session()
    reply = session.post(f"{replica.url}/xqueue/login/", data={"username": "grader", "password": "grader-password"},
                         timeout=10).json()
    assert reply["return_code"] == 0

    def status() -> int:
        return session.get(f"{replica.url}/xqueue/get_queuelen/", params={"queue_name": "test-pull"},
                           allow_redirects=False, timeout=10).status_code

    assert status() == 200 and status() == 200  # the second one is answered from the replica's memory
    fetch(first, "UPDATE accounts SET is_active = false WHERE username = 'grader' RETURNING id")
    assert status() == 302


@pytest.mark.parametrize("waiting_per_slot", [16, 1], ids=["in-process", "through-the-outbox"])
def test_a_saturated_host_gets_its_callbacks_in_the_order_the_grades_came(
        xqueue_factory: Callable[..., ServerThread], fake_lms: FakeLMS, monkeypatch: pytest.MonkeyPatch,
        waiting_per_slot: int) -> None:
    """Grades arrive faster than the LMS takes callbacks, so they queue for the host's one slot: in
    the server process, or (when that queue is full, as with a bound of 1 here) in the outbox. A
    later grade must not take a freed slot ahead of an earlier one in either place, or under steady
    load the outbox rows wait for a lull that never comes (seen in the server benchmark at 64
    clients: a p99 of seconds beside a p50 of 27 ms)."""
    monkeypatch.setattr(delivery, "INLINE_WAITING_PER_SLOT", waiting_per_slot)
    server = xqueue_factory(callback_per_host_concurrency=1)
    fake_lms.delay = 0.15  # one slot, 0.15 s per callback: about 6.7 callbacks/s
    lms, grader = LMSClient(server), GraderClient(server)
    keys = [lms.submit("test-pull", fake_lms.callback_url(f"fifo{i}"))[0] for i in range(14)]
    for _ in keys:  # about 12 grades/s
        item = grader.pull("test-pull")
        assert item is not None
        assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0
        time.sleep(0.08)
    fake_lms.wait_for(lambda calls: {c.xqueue_header["lms_key"] for c in calls} >= set(keys), timeout=30)
    fake_lms.delay = 0.0
    order = [c.xqueue_header["lms_key"] for c in fake_lms.callbacks]
    position = {key: order.index(key) for key in keys}
    # Submissions are pulled in the order they were made (FIFO), so keys is the order of the grades.
    # Hand-backs are written concurrently, so neighbours may swap; nothing may be overtaken by more.
    late = {key: [k for k in keys[i + 2:] if position[k] < position[key]] for i, key in enumerate(keys)}
    assert all(not overtaken for overtaken in late.values()), {k: v for k, v in late.items() if v}
