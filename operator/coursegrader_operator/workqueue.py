"""A keyed work queue along the lines of controller-runtime's (client-go workqueue + rate limiter).

* Work for a key that is already pending is merged into it (`merge`), never queued twice.
* A key is processed by one worker at a time; work added meanwhile waits for that run to end.
* Work can be added with a delay (a timer, a planned re-check).
* A failed key is retried with bounded exponential backoff, and the backoff holds for *all* work on
  that key: periodic producers (the scaler's tick, the resync) merge into the pending retry instead
  of running the key again at once. Only `expedite=True` (a human changed the spec) skips the wait.

`KeyedQueue` is the bookkeeping alone (no asyncio, clock injected): unit tests drive it with a fake
clock. `WorkQueue` runs workers over it on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
W = TypeVar("W")


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `attempt` (1-based) of a key that keeps failing."""

    base: float = 0.5
    cap: float = 30.0
    max_attempts: int = 10  # after this many consecutive failures a key waits `parked` between tries
    parked: float = 300.0

    def delay(self, attempt: int) -> float:
        if attempt > self.max_attempts:
            return self.parked
        return min(self.cap, self.base * 2 ** (attempt - 1))


@dataclass
class _Entry(Generic[W]):
    work: W | None = None
    due: float | None = None  # when the pending work may run (None: nothing pending)
    seq: int = -1  # the heap item that stands for this entry (older items are stale)
    active: bool = False
    gone: bool = False  # forgotten while a run was in progress
    failures: int = 0
    hold_until: float = 0.0  # backoff: no work for this key before this time (unless expedited)


@dataclass(frozen=True)
class Failure:
    attempt: int
    delay: float
    parked: bool  # attempts are used up: the key now waits the long `parked` delay between tries


class KeyedQueue(Generic[K, W]):
    """Which key to work on next, and when (pure bookkeeping; the clock is injected)."""

    def __init__(self, merge: Callable[[W, W], W], *, backoff: Backoff = Backoff(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._merge = merge
        self._backoff = backoff
        self._clock = clock
        self._entries: dict[K, _Entry[W]] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    def add(self, key: K, work: W, *, delay: float = 0.0, expedite: bool = False) -> None:
        e = self._entries.setdefault(key, _Entry())
        if e.gone:
            e.gone = False  # a new object under the same key while the old one's run ends
        e.work = work if e.work is None else self._merge(e.work, work)
        due = self._clock() + max(0.0, delay)
        if expedite:
            e.hold_until = 0.0
        elif e.hold_until > due:
            due = e.hold_until
        if e.due is None or due < e.due:
            e.due = due
            self._push(key, e)

    def pop(self) -> tuple[K, W] | None:
        """The key whose work is due first (and not being processed), marked active; or None."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, seq, key = heapq.heappop(self._heap)
            e = self._entries.get(key)
            if e is None or e.seq != seq or e.work is None or e.active:
                continue  # stale item; an active key is pushed again when its run ends
            work = e.work
            e.work, e.due, e.seq, e.active = None, None, -1, True
            return key, work
        return None

    def next_due(self) -> float | None:
        """When the earliest pending work of an idle key becomes due (None: nothing pending)."""
        while self._heap:
            _, seq, key = self._heap[0]
            e = self._entries.get(key)
            if e is not None and e.seq == seq and e.work is not None and not e.active:
                return self._heap[0][0]
            heapq.heappop(self._heap)
        return None

    def done(self, key: K) -> None:
        """The key's run succeeded: its backoff is reset."""
        e = self._entries.get(key)
        if e is None:
            return
        if e.gone:
            self._entries.pop(key, None)
            return
        e.active, e.failures, e.hold_until = False, 0, 0.0
        if e.work is None:
            self._entries.pop(key, None)
        else:
            self._push(key, e)

    def failed(self, key: K, work: W) -> Failure:
        """The key's run failed: its work is retried after the backoff, merged with newer work."""
        e = self._entries.get(key)
        if e is None or e.gone:
            self._entries.pop(key, None)
            return Failure(0, 0.0, False)
        e.active = False
        e.failures += 1
        delay = self._backoff.delay(e.failures)
        e.hold_until = self._clock() + delay
        newer, e.work, e.due, e.seq = e.work, None, None, -1
        self.add(key, work if newer is None else self._merge(work, newer))
        return Failure(e.failures, delay, e.failures > self._backoff.max_attempts)

    def forget(self, key: K) -> None:
        """Drop everything about the key (its object is gone); a run in progress just ends."""
        e = self._entries.pop(key, None)
        if e is not None and e.active:
            self._entries[key] = _Entry(active=True, gone=True)

    def attempts(self, key: K) -> int:
        e = self._entries.get(key)
        return e.failures if e else 0

    def pending(self, key: K) -> tuple[W | None, float | None]:
        """The key's pending work and when it is due (for tests and diagnostics)."""
        e = self._entries.get(key)
        return (e.work, e.due) if e else (None, None)

    @property
    def idle(self) -> bool:
        return not any(e.work is not None or e.active for e in self._entries.values())

    def _push(self, key: K, e: _Entry[W]) -> None:
        if e.active or e.due is None:
            return  # pushed when the current run ends
        e.seq = next(self._seq)
        heapq.heappush(self._heap, (e.due, e.seq, key))


class WorkQueue(Generic[K, W]):
    """Workers over a KeyedQueue: `process(key, work)` runs for one key at a time."""

    def __init__(self, process: Callable[[K, W], Awaitable[None]], merge: Callable[[W, W], W], *,
                 workers: int, backoff: Backoff = Backoff(),
                 on_failure: Callable[[K, BaseException, Failure], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core: KeyedQueue[K, W] = KeyedQueue(merge, backoff=backoff, clock=clock)
        self._process = process
        self._on_failure = on_failure
        self._workers = workers
        self._clock = clock
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, key: K, work: W, *, delay: float = 0.0, expedite: bool = False) -> None:
        self.core.add(key, work, delay=delay, expedite=expedite)
        self._wake.set()

    def forget(self, key: K) -> None:
        self.core.forget(key)

    @property
    def idle(self) -> bool:
        return self.core.idle

    def start(self) -> None:
        for i in range(self._workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"cg-worker-{i}"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    async def _worker(self) -> None:
        while True:
            item = self.core.pop()
            if item is None:
                due = self.core.next_due()
                self._wake.clear()
                timeout = None if due is None else max(0.0, due - self._clock())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            key, work = item
            try:
                await self._process(key, work)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure is retried with backoff
                failure = self.core.failed(key, work)
                if self._on_failure is not None:
                    self._on_failure(key, e, failure)
            else:
                self.core.done(key)
            finally:
                self._wake.set()  # this key's newer work (or a retry) may now be taken


async def cancel_and_wait(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks``, wait until each has finished (whatever it raised), and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    tasks.clear()
