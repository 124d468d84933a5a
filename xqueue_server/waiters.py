"""Long-poll support: graders waiting in get_submission?wait= are woken when their queue gets work.

PostgreSQL NOTIFY (sent by the submit statement) reaches every replica through one LISTEN
connection per process; this object fans each notification out to the waiters of that queue.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class QueueWaiters:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self.stopping = asyncio.Event()

    def notify(self, queue_name: str) -> None:
        for future in self._waiters.pop(queue_name, set()):
            if not future.done():
                future.set_result(None)

    def notify_all(self) -> None:
        for name in list(self._waiters):
            self.notify(name)

    async def wait(self, queue_name: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for work on ``queue_name``; True when woken by a notification."""
        if timeout <= 0 or self.stopping.is_set():
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[queue_name].add(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(queue_name)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    self._waiters.pop(queue_name, None)

    def stop(self) -> None:
        self.stopping.set()
        self.notify_all()
