"""Long-poll waiters: one wake-up per notification, and never to a grader that has left."""

from __future__ import annotations

import asyncio

from xqueue_server.waiters import QueueWaiters


async def test_a_notification_wakes_the_longest_waiting_grader_only() -> None:
    waiters = QueueWaiters()
    first = asyncio.create_task(waiters.wait("q", 5))
    second = asyncio.create_task(waiters.wait("q", 0.3))
    await asyncio.sleep(0.01)
    waiters.notify("q")
    assert await first is True
    assert await second is False  # timed out: one submission wakes one grader


async def test_a_grader_that_left_is_passed_over() -> None:
    waiters = QueueWaiters()
    left = asyncio.create_task(waiters.wait("q", 5, gone=lambda: True))
    present = asyncio.create_task(waiters.wait("q", 5, gone=lambda: False))
    await asyncio.sleep(0.01)
    waiters.notify("q")
    # The departed waiter ends at once without the wake-up; the next one gets it.
    assert await asyncio.wait_for(left, 1) is False
    assert await asyncio.wait_for(present, 1) is True


async def test_stopping_ends_every_wait_without_a_wake_up() -> None:
    waiters = QueueWaiters()
    tasks = [asyncio.create_task(waiters.wait(q, 5)) for q in ("a", "b")]
    await asyncio.sleep(0.01)
    waiters.stop()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [False, False]
    assert await waiters.wait("a", 5) is False  # no new waits once stopping
