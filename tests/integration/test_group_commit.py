"""Group commit on real PostgreSQL: concurrent calls of the hot statements share statements
(batching.py), and a batch means exactly what its items would mean one after another.

Concurrency is made with ``asyncio.gather``: the calls all queue before the first statement is sent,
so they go in batches of several items (each test checks that some batch did)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

from xqueue_server.db import Database
from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import create_database

T = TypeVar("T")
LEASE, MAX_PULLS = 60.0, 5


@pytest.fixture
def database_url(postgres: LocalPostgres) -> Iterator[str]:
    yield create_database(postgres.url, "xq_group")


def with_database(url: str, scenario: Callable[[Database], Awaitable[T]]) -> T:
    async def run() -> T:
        db = await Database.connect(url, 2, 8)
        try:
            await db.migrate()
            for queue in ("q1", "q2", "q3"):
                await db.create_queue(queue)
            return await scenario(db)
        finally:
            await db.close()

    return asyncio.run(run())


async def submit(db: Database, queue: str, url: str, body: str = "b") -> tuple[int, int, int]:
    return await db.insert_submission(queue, url, '{"lms_key": "k"}', body, {}, "test")


def batched(db: Database, kind: str) -> None:
    statements, items = db.batch_sizes()[kind]
    assert items > statements, f"no {kind} batch of several items ran: {statements} statements, {items} items"


def test_concurrent_submissions_mean_the_same_as_one_after_another(database_url: str) -> None:
    urls = ["a", "b", "a", "c", "a", "b"]

    async def scenario(db: Database) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        # The same sequence twice: one after another in q1, all at once in q2.
        one_by_one = [await submit(db, "q1", url) for url in urls]
        statements_before = db.batch_sizes()["insert"][0]
        together = await asyncio.gather(*(submit(db, "q2", url) for url in urls))
        assert db.batch_sizes()["insert"][0] - statements_before < len(urls)
        batched(db, "insert")
        pending = [await db.pool.fetch("SELECT id, lms_callback_url FROM submissions WHERE queue_name = $1 "
                                       "AND state = 'pending' ORDER BY id", q) for q in ("q1", "q2")]
        return one_by_one, list(together), [dict(r) for r in pending[0]], [dict(r) for r in pending[1]]

    one_by_one, together, pending_1, pending_2 = with_database(database_url, scenario)
    # Queue length and superseded count of every submission agree with the sequential run.
    assert [(length, superseded) for _, length, superseded in together] == \
           [(length, superseded) for _, length, superseded in one_by_one]
    assert [(length, superseded) for _, length, superseded in one_by_one] == \
           [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 1)]
    # Ids follow the call order (FIFO), and the latest submission of each URL is what stays pending.
    ids = [submission_id for submission_id, _, _ in together]
    assert ids == sorted(ids)
    assert [r["lms_callback_url"] for r in pending_2] == [r["lms_callback_url"] for r in pending_1] == ["c", "a", "b"]
    assert [r["id"] for r in pending_2] == [ids[3], ids[4], ids[5]]


def test_a_submission_the_database_refuses_fails_alone(database_url: str) -> None:
    async def scenario(db: Database) -> tuple[list[Any], list[str]]:
        await submit(db, "q1", "first")  # the four below go in one batch, which fails, then one by one
        results = await asyncio.gather(submit(db, "q1", "x"), submit(db, "q1", "y"),
                                       submit(db, "q1", "z", body="NUL \x00 in the body"),
                                       submit(db, "q1", "w"), return_exceptions=True)
        stored = [r["lms_callback_url"] for r in await db.pool.fetch(
            "SELECT lms_callback_url FROM submissions WHERE queue_name = 'q1' ORDER BY lms_callback_url")]
        return list(results), stored

    results, stored = with_database(database_url, scenario)
    assert [isinstance(r, Exception) for r in results] == [False, False, True, False]
    # The others were stored (one by one, concurrently, so their queue lengths depend on timing).
    assert stored == ["first", "w", "x", "y"]


def test_concurrent_pulls_get_distinct_submissions_oldest_first(database_url: str) -> None:
    async def scenario(db: Database) -> tuple[list[int], list[list[int]], list[str]]:
        ids = [(await submit(db, "q1", f"u{n}"))[0] for n in range(6)]
        limits = [1, 2, 1, 1, 3]  # 8 slots for 6 submissions: the last pull gets only what is left
        pulls = await asyncio.gather(*(db.claim_submissions("q1", limit, LEASE, MAX_PULLS, f"grader-{n}")
                                       for n, limit in enumerate(limits)))
        batched(db, "claim")
        owners = [r["grader_id"] for r in await db.pool.fetch(
            "SELECT grader_id FROM submissions WHERE queue_name = 'q1' ORDER BY id")]
        return ids, [[c.id for c in claimed] for claimed in pulls], owners

    ids, pulled, owners = with_database(database_url, scenario)
    assert pulled == [[ids[0]], [ids[1], ids[2]], [ids[3]], [ids[4]], [ids[5]]]
    assert owners == ["grader-0", "grader-1", "grader-1", "grader-2", "grader-3", "grader-4"]


def test_concurrent_replies_each_get_their_own_outcome(database_url: str) -> None:
    async def scenario(db: Database) -> tuple[list[Any], int, list[str]]:
        for n in range(5):
            await submit(db, "q1", f"u{n}")
        await submit(db, "q3", "elsewhere")
        claimed = await db.claim_submissions("q1", 5, LEASE, MAX_PULLS, "grader")
        foreign = (await db.claim_submissions("q3", 1, LEASE, MAX_PULLS, "grader"))[0]
        a, b, c, d, e = claimed
        await db.record_result(e.id, e.pullkey, "already")  # answered before the batch below
        scope = ("q1", "q2")
        outcomes = await asyncio.gather(
            db.record_result(a.id, a.pullkey, "grade a", scope, 30.0),
            db.record_result(b.id, b.pullkey, "grade b", scope, 30.0),
            db.record_result(b.id, b.pullkey, "grade b", scope, 30.0),  # a retried request, same batch
            db.record_result(c.id, "not-the-key", "grade c", scope, 30.0),
            db.record_result(d.id, d.pullkey, "grade d", scope, 30.0),
            db.record_result(10**9, "x", "grade ?", scope, 30.0),
            db.record_result(foreign.id, foreign.pullkey, "grade f", scope, 30.0),  # outside the scope
            db.record_result(e.id, e.pullkey, "again", scope, 30.0),
        )
        batched(db, "reply")
        callbacks = await db.pool.fetchval("SELECT count(*) FROM callbacks")
        bodies = [r["grader_reply"] or "-" for r in await db.pool.fetch(
            "SELECT grader_reply FROM submissions WHERE queue_name = 'q1' ORDER BY id")]
        return list(outcomes), callbacks, bodies

    outcomes, callbacks, bodies = with_database(database_url, scenario)
    assert [o for o, _ in outcomes] == ["recorded", "recorded", "duplicate", "bad_key", "recorded", "missing",
                                        "missing", "duplicate"]
    # A recorded reply comes with its callback, claimed for this process to deliver.
    assert [cb is not None for _, cb in outcomes] == [True, True, False, False, True, False, False, False]
    assert [cb.xqueue_body for _, cb in outcomes if cb is not None] == ["grade a", "grade b", "grade d"]
    assert callbacks == 4  # "already" and the three recorded above
    assert bodies == ["grade a", "grade b", "-", "grade d", "already"]
