"""Long-poll support: graders waiting in get_submission?wait= are woken when their queue gets work.

PostgreSQL NOTIFY (sent by the submit statement when the queue was empty) reaches every replica through
one LISTEN connection per process. Each notification wakes one waiter of that queue (the longest
waiting), not all of them: waking every grader for one submission would make them race for it and
multiply the claim queries. A waiter that loses the race anyway simply waits again, and every waiter
re-checks on its own every few seconds (expired leases are not announced).

A waiter whose grader has closed its connection (``gone``) is passed over: the notification goes to
the next one, so work never waits for a grader that has left.

A submission is announced only when it arrives in an empty queue (insert_submission); a handler
that finds work while others of its queue wait wakes the next one (``has_waiters``, in
get_submission), so a backlog reaches every waiting grader one claim after another.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Callable

Gone = Callable[[], bool]


class QueueWaiters:
    def __init__(self) -> None:
        # Each waiter: a future resolved True when woken for work (False: stop, or its grader left).
        self._waiters: dict[str, deque[tuple[asyncio.Future[bool], Gone | None]]] = defaultdict(deque)
        self.stopping = asyncio.Event()

    def notify(self, queue_name: str) -> None:
        waiting = self._waiters.get(queue_name)
        while waiting:
            future, gone = waiting.popleft()
            if future.done():
                continue
            if gone is not None and gone():
                future.set_result(False)  # its handler ends now; the work goes to the next waiter
                continue
            future.set_result(True)
            return

    def has_waiters(self, queue_name: str) -> bool:
        return bool(self._waiters.get(queue_name))

    def notify_all(self) -> None:
        for waiting in list(self._waiters.values()):
            while waiting:
                future, _gone = waiting.popleft()
                if not future.done():
                    future.set_result(False)

    async def wait(self, queue_name: str, seconds: float, gone: Gone | None = None) -> bool:
        """Wait up to ``seconds`` for work on ``queue_name``; True when woken by a notification for it.

        ``gone`` tells whether the waiting grader has left; such a waiter is never handed a wake-up."""
        if seconds <= 0 or self.stopping.is_set():
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = (future, gone)
        waiting = self._waiters[queue_name]
        waiting.append(entry)
        try:
            return await asyncio.wait_for(future, seconds)
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()
            try:
                waiting.remove(entry)
            except ValueError:
                pass
            if not waiting:
                self._waiters.pop(queue_name, None)

    def waiting(self) -> dict[str, int]:
        """Grader requests waiting for work in this process, per queue (shown on the status page)."""
        return {name: sum(1 for future, _gone in waiting if not future.done())
                for name, waiting in self._waiters.items() if waiting}

    def stop(self) -> None:
        self.stopping.set()
        self.notify_all()
