"""Group commit for the hot statements: items that arrive while a statement of their kind is in flight
go together in the next one.

Natural batching: an item that finds its lane idle goes out at once (no timer, so a quiet server adds
no latency); while a statement is in flight, new items wait, and when it returns they all go in one
statement and one commit. Batches grow with the load by themselves. What a statement costs apart from
its rows (the driver's call, PostgreSQL's parse, plan and commit with its WAL flush) is then paid once
per batch instead of once per request (measured once on durable PostgreSQL, with a throwaway
script: an UPDATE by primary key cost 0.68 ms of CPU, driver and server together, alone, and 0.18 ms
per row in batches of 4; the README's server benchmark has the figures that count).

A lane is one kind of statement with the parameters its items must share (the queue of a claim, the
scope of a reply). A batch is the run of waiting items, in arrival order, up to the first whose
``conflict`` key is already in it or in a statement in flight (a second reply to one submission, a
second submission with one callback URL); that one waits for the next batch after that statement. So
batches mean the same as running their items one after another, in the order they came.

A lane runs up to ``max_in_flight`` statements at once (default 2), so one statement held up in
PostgreSQL (a row lock someone else keeps) does not stop its lane: the next batch goes beside it.

If a batch fails with an error that is not about the statement (``shared_errors``, the database being
unavailable), every item gets that error. Any other error may belong to one item, so the items are
run again each on its own, concurrently, and only the item at fault fails. A caller that stops
waiting (its request was cancelled) does not stop the statement; its result goes to ``orphaned``,
so that for example a claim nobody received can be handed back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # the lane: what a batch's items share
I = TypeVar("I")  # noqa: E741 (an item, as in the type names of the typing docs)
R = TypeVar("R")

log = logging.getLogger("xqueue.batching")


@dataclass
class _Lane(Generic[I, R]):
    waiting: list[tuple[I, asyncio.Future[R]]] = field(default_factory=list)
    running: int = 0  # statements in flight
    busy: set[Hashable] = field(default_factory=set)  # conflict keys of the items in flight


class Batcher(Generic[K, I, R]):
    """Runs ``run(key, items)`` (one statement for all ``items``, returning one result per item, in
    order) for items submitted one at a time with ``submit``; see the module docstring."""

    def __init__(
        self,
        run: Callable[[K, list[I]], Awaitable[Sequence[R]]],
        *,
        max_items: int = 64,
        max_in_flight: int = 2,
        conflict: Callable[[I], Hashable] | None = None,
        shared_errors: tuple[type[BaseException], ...] = (),
        orphaned: Callable[[K, I, R], Awaitable[None]] | None = None,
    ) -> None:
        self._run = run
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._conflict = conflict
        self._shared_errors = shared_errors
        self._orphaned = orphaned
        self._lanes: dict[K, _Lane[I, R]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # statements run, and items carried: the mean batch size is items / batches
        self.items = 0

    async def submit(self, key: K, item: I) -> R:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        lane.waiting.append((item, future))
        if lane.running < self._max_in_flight:
            lane.running += 1
            self._spawn(self._drain(key, lane))
        return await future

    async def close(self) -> None:
        """Wait for the statements in flight (they carry items that may already be committed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: K, lane: _Lane[I, R]) -> None:
        try:
            while lane.waiting:
                batch = self._take(lane)
                if not batch:  # the next item conflicts with one in flight: that statement's drain takes it
                    break
                conflicts = {self._conflict(item) for item, _ in batch} if self._conflict is not None else set()
                lane.busy |= conflicts
                try:
                    await self._run_batch(key, batch)
                finally:
                    lane.busy -= conflicts
        finally:
            lane.running -= 1
            if lane.running == 0:
                if lane.waiting:  # only if cancelled mid-way: nobody may be left waiting forever
                    for _item, future in lane.waiting:
                        future.cancel()
                    lane.waiting.clear()
                if self._lanes.get(key) is lane:
                    del self._lanes[key]

    def _take(self, lane: _Lane[I, R]) -> list[tuple[I, asyncio.Future[R]]]:
        """The longest run of waiting items, in arrival order, without a conflict among them or with an
        item in flight: the batch keeps the order of its items, and what follows stays in order for the
        next."""
        waiting = [entry for entry in lane.waiting if not entry[1].done()]  # done: its caller left before
        seen: set[Hashable] = set(lane.busy)
        size = 0
        for item, _future in waiting[: self._max_items]:
            if self._conflict is not None:
                conflict = self._conflict(item)
                if conflict in seen:
                    break
                seen.add(conflict)
            size += 1
        lane.waiting = waiting[size:]
        return waiting[:size]

    async def _run_batch(self, key: K, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        if not batch:
            return
        items = [item for item, _ in batch]
        self.batches += 1
        self.items += len(items)
        try:
            results = await self._run(key, items)
        except asyncio.CancelledError:
            for _item, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, self._shared_errors):
                for _item, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            # One item may be at fault: run each alone, so the others still succeed.
            await asyncio.gather(*(self._run_batch(key, [entry]) for entry in batch))
            return
        if len(results) != len(items):  # a bug in ``run``: fail loudly rather than misroute results
            error = RuntimeError(f"batch of {len(items)} returned {len(results)} results")
            for _item, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for (item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
            elif self._orphaned is not None:
                self._spawn(self._orphan(key, item, result))

    async def _orphan(self, key: K, item: I, result: R) -> None:
        assert self._orphaned is not None
        try:
            await self._orphaned(key, item, result)
        except Exception:
            log.warning("could not undo the result of an abandoned item", exc_info=True)
