"""Database outages: recognising them, and logging each one once.

Every query goes through ``GuardedPool``, which turns "cannot reach the database" errors (refused
connection, server shutting down, connection lost, timeout) into ``DatabaseUnavailable`` and tells
``DatabaseHealth`` about each failure and success. ``DatabaseHealth`` logs the transition to down
once and the recovery once, so an outage is two log lines, not one traceback per request; the HTTP
layer answers ``DatabaseUnavailable`` with 503 and Retry-After.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, TypeVar

import asyncpg

from .logs import error_fields

log = logging.getLogger("xqueue.database")
T = TypeVar("T")

# Errors PostgreSQL or the driver raise when the server is down, shutting down, unreachable or out of
# connections, as opposed to errors about a statement.
_SERVER_GONE = (
    asyncpg.PostgresConnectionError,  # 08xxx, and "connection was closed in the middle of operation"
    asyncpg.OperatorInterventionError,  # 57Pxx: admin shutdown, crash shutdown, cannot connect now
    asyncpg.InsufficientResourcesError,  # 53xxx: too many connections, out of memory, disk full
)


class DatabaseUnavailable(Exception):
    """The database cannot be reached right now; worth retrying later. Its text holds no data."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"database unavailable ({type(cause).__name__})")
        self.cause_name = type(cause).__name__


def is_unavailable(exc: BaseException, *, connecting: bool) -> bool:
    """Whether ``exc`` means the database is unreachable. While connecting (acquiring from the pool),
    socket errors and timeouts count too; inside a block of our own code they could come from
    elsewhere (file storage), so only the driver's own connection errors count there."""
    if isinstance(exc, (DatabaseUnavailable, *_SERVER_GONE)):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return True  # "connection is closed": the pool handed out a connection the server dropped
    if isinstance(exc, asyncpg.InternalClientError):
        # The driver's protocol state went wrong, which in practice happens when the server's shutdown
        # message lands on an idle pooled connection just as a statement is sent on it ("cannot
        # switch to state 12; another operation is in progress"). Nothing about the statement is
        # wrong, and the pool replaces the connection on release, so it is worth retrying later.
        return True
    return connecting and isinstance(exc, OSError | TimeoutError)


class DatabaseHealth:
    """Up/down state from the outcomes of real queries; logs each transition once."""

    def __init__(self) -> None:
        self.available = True
        self.down_since: float | None = None
        self.outages = 0

    def failed(self, exc: BaseException) -> None:
        if not self.available:
            return
        self.available = False
        self.down_since = time.monotonic()
        self.outages += 1
        log.error("database unavailable; answering 503 until it is back",
                  extra={"fields": error_fields(exc)})

    def succeeded(self) -> None:
        if self.available:
            return
        self.available = True
        seconds = time.monotonic() - (self.down_since or time.monotonic())
        log.warning("database available again", extra={"fields": {"outage_seconds": round(seconds, 1)}})


class GuardedPool:
    """An asyncpg pool whose errors are classified (see module docstring); otherwise the same API."""

    def __init__(self, pool: asyncpg.Pool, health: DatabaseHealth) -> None:
        self._pool = pool
        self.health = health

    async def _run(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except BaseException as exc:
            if is_unavailable(exc, connecting=True):
                self.health.failed(exc)
                raise DatabaseUnavailable(exc) from exc
            raise
        self.health.succeeded()
        return result

    async def fetch(self, *args: Any, **kwargs: Any) -> list[asyncpg.Record]:
        return await self._run(self._pool.fetch(*args, **kwargs))

    async def fetchrow(self, *args: Any, **kwargs: Any) -> asyncpg.Record | None:
        return await self._run(self._pool.fetchrow(*args, **kwargs))

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run(self._pool.fetchval(*args, **kwargs))

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        return await self._run(self._pool.execute(*args, **kwargs))

    def acquire(self) -> _GuardedAcquire:
        return _GuardedAcquire(self._pool, self.health)

    def __getattr__(self, name: str) -> Any:  # close, terminate, get_size, ...
        return getattr(self._pool, name)


class _GuardedAcquire:
    """``async with pool.acquire() as conn``: classifies errors of the acquire and of the block."""

    def __init__(self, pool: asyncpg.Pool, health: DatabaseHealth) -> None:
        self._context = pool.acquire()
        self._health = health

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            conn = await self._context.__aenter__()
        except BaseException as exc:
            if is_unavailable(exc, connecting=True):
                self._health.failed(exc)
                raise DatabaseUnavailable(exc) from exc
            raise
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._context.__aexit__(exc_type, exc, tb)
        if exc is None:
            self._health.succeeded()
        elif is_unavailable(exc, connecting=False) and not isinstance(exc, DatabaseUnavailable):
            self._health.failed(exc)
            raise DatabaseUnavailable(exc) from exc
