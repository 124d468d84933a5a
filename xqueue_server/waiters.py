"""Long-poll support: graders waiting in get_submission?wait= are woken when their queue gets work.

PostgreSQL NOTIFY (sent by the submit statement, one per submission) reaches every replica through
one LISTEN connection per process. Each notification wakes one waiter of that queue (the longest
waiting), not all of them: waking every grader for one submission would make them race for it and
multiply the claim queries. A waiter that loses the race anyway simply waits again, and every waiter
re-checks on its own every few seconds (expired leases are not announced).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque


class QueueWaiters:
    def __init__(self) -> None:
        self._waiters: dict[str, deque[asyncio.Future[None]]] = defaultdict(deque)
        self.stopping = asyncio.Event()

    def notify(self, queue_name: str) -> None:
        waiting = self._waiters.get(queue_name)
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(None)
                return

    def notify_all(self) -> None:
        for waiting in list(self._waiters.values()):
            while waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_result(None)

    async def wait(self, queue_name: str, seconds: float) -> bool:
        """Wait up to ``seconds`` for work on ``queue_name``; True when woken by a notification."""
        if seconds <= 0 or self.stopping.is_set():
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = self._waiters[queue_name]
        waiting.append(future)
        try:
            await asyncio.wait_for(future, seconds)
            return True
        except TimeoutError:
            return False
        finally:
            if not future.done():
                future.cancel()
            try:
                waiting.remove(future)
            except ValueError:
                pass
            if not waiting:
                self._waiters.pop(queue_name, None)

    def stop(self) -> None:
        self.stopping.set()
        self.notify_all()
