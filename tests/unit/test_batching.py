"""The group-commit batcher on its own: a fake statement (an async function) stands in for PostgreSQL,
so each rule of batching.py is checked exactly: who goes together, who waits, who gets which error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from xqueue_server.batching import Batcher


class Unavailable(Exception):
    pass


class Statement:
    """Records every batch it runs; each run waits for ``release`` so a test decides when it returns."""

    def __init__(self, fail_on: set[int] | None = None, fail_all: BaseException | None = None) -> None:
        self.batches: list[tuple[str, list[int]]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_on = fail_on or set()
        self.fail_all = fail_all

    async def __call__(self, key: str, items: list[int]) -> Sequence[int]:
        self.batches.append((key, list(items)))
        await self.release.wait()
        if self.fail_all is not None:
            raise self.fail_all
        if self.fail_on & set(items):
            raise ValueError(f"bad item among {items}")
        return [item * 10 for item in items]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_idle_lane_sends_at_once_and_items_arriving_meanwhile_go_together() -> None:
    async def scenario() -> None:
        statement = Statement()
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit("q", 1))
        await settle()
        assert statement.batches == [("q", [1])]  # no timer: sent while nothing else is waiting
        rest = [asyncio.ensure_future(batcher.submit("q", n)) for n in (2, 3, 4)]
        other = asyncio.ensure_future(batcher.submit("other lane", 5))
        await settle()
        assert statement.batches == [("q", [1]), ("other lane", [5])]  # 2-4 wait for the one in flight
        statement.release.set()
        assert await asyncio.gather(first, *rest, other) == [10, 20, 30, 40, 50]
        assert statement.batches == [("q", [1]), ("other lane", [5]), ("q", [2, 3, 4])]
        assert (batcher.batches, batcher.items) == (3, 5)
        assert batcher._lanes == {}  # idle lanes are forgotten

    asyncio.run(scenario())


def test_a_second_statement_goes_beside_one_held_up_and_the_rest_wait_for_either() -> None:
    async def scenario() -> None:
        statement = Statement()
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, max_in_flight=2)
        first = asyncio.ensure_future(batcher.submit("q", 1))
        await settle()
        second = asyncio.ensure_future(batcher.submit("q", 2))
        await settle()
        rest = [asyncio.ensure_future(batcher.submit("q", n)) for n in (3, 4)]
        await settle()
        assert statement.batches == [("q", [1]), ("q", [2])]
        statement.release.set()
        assert await asyncio.gather(first, second, *rest) == [10, 20, 30, 40]
        assert statement.batches == [("q", [1]), ("q", [2]), ("q", [3, 4])]

    asyncio.run(scenario())


def test_an_item_conflicting_with_one_in_flight_waits_for_it_even_with_a_free_slot() -> None:
    async def scenario() -> None:
        statement = Statement()
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, conflict=lambda item: item % 2, max_in_flight=2)
        first = asyncio.ensure_future(batcher.submit("q", 1))
        await settle()
        same_key = asyncio.ensure_future(batcher.submit("q", 3))
        await settle()
        assert statement.batches == [("q", [1])]  # 3 would run beside 1, not after it
        statement.release.set()
        assert await asyncio.gather(first, same_key) == [10, 30]
        assert statement.batches == [("q", [1]), ("q", [3])]
        assert batcher._lanes == {}

    asyncio.run(scenario())


def test_conflicting_items_never_share_a_batch_and_keep_their_order() -> None:
    async def scenario() -> None:
        statement = Statement()
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, conflict=lambda item: item % 2, max_items=10,
                                                  max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit("q", 100))
        await settle()
        waiting = [asyncio.ensure_future(batcher.submit("q", n)) for n in (1, 3, 2, 5, 4)]
        await settle()
        statement.release.set()
        assert await asyncio.gather(first, *waiting) == [1000, 10, 30, 20, 50, 40]
        # A batch ends before the first item that conflicts with one in it: the order is kept.
        assert [items for _, items in statement.batches] == [[100], [1], [3, 2], [5, 4]]

    asyncio.run(scenario())


def test_batches_are_bounded() -> None:
    async def scenario() -> None:
        statement = Statement()
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, max_items=3, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit("q", 0))
        await settle()
        waiting = [asyncio.ensure_future(batcher.submit("q", n)) for n in range(1, 8)]
        await settle()
        statement.release.set()
        await asyncio.gather(first, *waiting)
        assert [items for _, items in statement.batches] == [[0], [1, 2, 3], [4, 5, 6], [7]]

    asyncio.run(scenario())


def test_an_item_at_fault_fails_alone() -> None:
    async def scenario() -> None:
        statement = Statement(fail_on={3})
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit("q", 1))
        await settle()
        waiting = [asyncio.ensure_future(batcher.submit("q", n)) for n in (2, 3, 4)]
        await settle()
        statement.release.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert results[:2] == [10, 20] and results[3] == 40
        assert isinstance(results[2], ValueError)
        # The failed batch, then each of its items alone.
        assert [items for _, items in statement.batches] == [[1], [2, 3, 4], [2], [3], [4]]

    asyncio.run(scenario())


def test_a_shared_error_fails_the_whole_batch_without_retries() -> None:
    async def scenario() -> None:
        statement = Statement(fail_all=Unavailable("down"))
        statement.release.clear()
        batcher: Batcher[str, int, int] = Batcher(statement, shared_errors=(Unavailable,), max_in_flight=1)
        first = asyncio.ensure_future(batcher.submit("q", 1))
        await settle()
        waiting = [asyncio.ensure_future(batcher.submit("q", n)) for n in (2, 3)]
        await settle()
        statement.release.set()
        results = await asyncio.gather(first, *waiting, return_exceptions=True)
        assert all(isinstance(r, Unavailable) for r in results)
        assert [items for _, items in statement.batches] == [[1], [2, 3]]

    asyncio.run(scenario())


def test_a_caller_that_stops_waiting_does_not_stop_the_statement_and_its_result_is_handed_back() -> None:
    async def scenario() -> None:
        statement = Statement()
        statement.release.clear()
        orphans: list[tuple[str, int, int]] = []

        async def orphaned(key: str, item: int, result: int) -> None:
            orphans.append((key, item, result))

        batcher: Batcher[str, int, int] = Batcher(statement, orphaned=orphaned, max_in_flight=1)
        gone = asyncio.ensure_future(batcher.submit("q", 1))
        await settle()
        never_sent = asyncio.ensure_future(batcher.submit("q", 2))
        stays = asyncio.ensure_future(batcher.submit("q", 3))
        await settle()
        gone.cancel()  # its statement is in flight
        never_sent.cancel()  # still waiting: it is simply not sent
        statement.release.set()
        assert await stays == 30
        await batcher.close()
        assert orphans == [("q", 1, 10)]
        assert [items for _, items in statement.batches] == [[1], [3]]

    asyncio.run(scenario())


def test_a_wrong_number_of_results_fails_every_item_rather_than_misrouting() -> None:
    async def short(_key: str, items: list[int]) -> Sequence[int]:
        return items[:-1]

    async def scenario() -> None:
        batcher: Batcher[str, int, int] = Batcher(short)
        with pytest.raises(RuntimeError, match="returned 0 results"):
            await batcher.submit("q", 1)

    asyncio.run(scenario())
