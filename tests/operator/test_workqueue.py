"""The keyed work queue: merging, one run per key, delays, bounded backoff (fake clock), and workers."""

from __future__ import annotations

import asyncio

import pytest

from coursegrader_operator.workqueue import Backoff, KeyedQueue, WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def union(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    return a | b


def queue(clock: Clock, backoff: Backoff | None = None) -> KeyedQueue[str, frozenset[str]]:
    return KeyedQueue(union, backoff=backoff or Backoff(), clock=clock)


def w(*items: str) -> frozenset[str]:
    return frozenset(items)


def test_pending_work_for_a_key_is_merged_not_queued_twice() -> None:
    clock = Clock()
    q = queue(clock)
    q.add("a", w("status"))
    q.add("a", w("full"))
    q.add("b", w("status"))
    assert q.pop() == ("a", w("status", "full"))
    assert q.pop() == ("b", w("status"))
    assert q.pop() is None
    assert not q.idle  # both runs are still in progress


def test_a_key_runs_once_at_a_time_and_work_added_meanwhile_waits() -> None:
    clock = Clock()
    q = queue(clock)
    q.add("a", w("one"))
    assert q.pop() == ("a", w("one"))
    q.add("a", w("two"))
    assert q.pop() is None  # "a" is being processed
    q.done("a")
    assert q.pop() == ("a", w("two"))
    q.done("a")
    assert q.idle and q.pop() is None


def test_delayed_work_becomes_due_and_earlier_work_wins() -> None:
    clock = Clock()
    q = queue(clock)
    q.add("a", w("timer"), delay=5)
    assert q.pop() is None and q.next_due() == 1005.0
    clock.now += 5
    assert q.pop() == ("a", w("timer"))
    q.done("a")
    q.add("b", w("later"), delay=5)
    q.add("b", w("now"))
    assert q.pop() == ("b", w("later", "now"))


def test_backoff_doubles_to_its_cap_and_resets_on_success() -> None:
    clock = Clock()
    q = queue(clock, Backoff(base=0.5, cap=4, max_attempts=10))
    q.add("a", w("x"))
    delays = []
    for _ in range(6):
        key, work = q.pop() or ("", w())
        failure = q.failed(key, work)
        delays.append(failure.delay)
        assert q.pop() is None  # not before the delay
        clock.now += failure.delay
    assert delays == [0.5, 1, 2, 4, 4, 4]
    assert q.pop() == ("a", w("x"))
    q.done("a")
    assert q.attempts("a") == 0
    q.add("a", w("y"))
    assert q.pop() == ("a", w("y"))  # no hold after a success


def test_periodic_work_does_not_bypass_a_pending_retry() -> None:
    """The scaler's tick re-added failing keys at once: ten attempts ran in 11 s (issue 12)."""
    clock = Clock()
    q = queue(clock, Backoff(base=0.5, cap=30, max_attempts=10, parked=300))
    q.add("a", w("deployment"))
    runs: list[float] = []
    started = clock.now
    while clock.now - started < 60:
        q.add("a", w("status"))  # every 0.5 s tick adds work, as the scaler does under load
        item = q.pop()
        if item is not None:
            runs.append(clock.now - started)
            q.failed(*item)
        clock.now += 0.5
    # 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5: each retry waited for its backoff despite the ticks.
    assert runs == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    work, _ = q.pending("a")
    assert work == w("deployment", "status")  # nothing was lost while waiting


def test_used_up_attempts_park_the_key_instead_of_starting_over() -> None:
    """'giving up' used to be followed at once by attempt 1 (issue 12)."""
    clock = Clock()
    q = queue(clock, Backoff(base=0.5, cap=1, max_attempts=3, parked=300))
    q.add("a", w("x"))
    failures = []
    for _ in range(4):
        item = q.pop()
        assert item is not None
        failures.append(q.failed(*item))
        clock.now += failures[-1].delay
    assert [f.attempt for f in failures] == [1, 2, 3, 4]
    assert [f.parked for f in failures] == [False, False, False, True]
    assert failures[-1].delay == 300
    clock.now -= 299  # one second after the key was parked
    q.add("a", w("tick"))
    assert q.pop() is None  # periodic work waits for the parked retry
    q.add("a", w("spec"), expedite=True)  # a new generation is worth trying at once
    assert q.pop() == ("a", w("x", "tick", "spec"))


def test_forget_drops_pending_work_and_a_running_key_ends_quietly() -> None:
    clock = Clock()
    q = queue(clock)
    q.add("a", w("x"))
    q.add("b", w("y"))
    q.forget("b")
    assert q.pop() == ("a", w("x"))
    q.forget("a")
    assert q.failed("a", w("x")).attempt == 0  # not retried: its object is gone
    assert q.pop() is None and q.idle


async def test_workers_serialise_a_key_and_retry_failures() -> None:
    seen: list[tuple[str, frozenset[str]]] = []
    running: set[str] = set()
    overlap = False
    fail_once = {"b"}

    async def process(key: str, work: frozenset[str]) -> None:
        nonlocal overlap
        overlap = overlap or key in running
        running.add(key)
        try:
            await asyncio.sleep(0.01)
            seen.append((key, work))
            if key in fail_once:
                fail_once.discard(key)
                raise RuntimeError("boom")
        finally:
            running.discard(key)

    failures = []
    wq: WorkQueue[str, frozenset[str]] = WorkQueue(
        process, union, workers=4, backoff=Backoff(base=0.05),
        on_failure=lambda key, exc, failure: failures.append((key, str(exc), failure.attempt)))
    wq.start()
    try:
        for i in range(5):
            wq.add("a", w(f"a{i}"))
            wq.add("b", w(f"b{i}"))
            await asyncio.sleep(0.003)
        for _ in range(200):
            if wq.idle:
                break
            await asyncio.sleep(0.01)
        assert wq.idle
    finally:
        await wq.stop()
    assert not overlap
    assert failures == [("b", "boom", 1)]
    done_a = frozenset().union(*(work for key, work in seen if key == "a"))
    assert done_a == w(*(f"a{i}" for i in range(5)))
    assert seen[-1][0] == "b" or any(key == "b" for key, _ in seen[-3:])


@pytest.mark.parametrize("delay", [0.05, 0.1])
async def test_delayed_add_wakes_an_idle_worker(delay: float) -> None:
    got = asyncio.Event()

    async def process(key: str, work: frozenset[str]) -> None:
        got.set()

    wq: WorkQueue[str, frozenset[str]] = WorkQueue(process, union, workers=1)
    wq.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        wq.add("a", w("x"), delay=delay)
        await asyncio.wait_for(got.wait(), 2)
        assert loop.time() - started >= delay * 0.9
    finally:
        await wq.stop()
