"""Per-application state shared by the handlers, and where a request comes from.

Who is calling (sessions, tokens, HTTP Basic) is ``auth.current_account``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .client_address import client_address, parse_networks
from .config import Settings
from .db import Database
from .metrics import Metrics
from .storage import Storage
from .validation import text_problem
from .waiters import QueueWaiters

if TYPE_CHECKING:  # auth.py uses this module to read requests
    from .auth import Authenticator

CONTEXT_KEY: web.AppKey[AppContext] = web.AppKey("xqueue_context")


@dataclass
class AppContext:
    settings: Settings
    db: Database
    auth: Authenticator
    storage: Storage
    metrics: Metrics
    waiters: QueueWaiters
    signing_key: str
    _queue_cache: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def of(request: web.Request) -> AppContext:
        return request.app[CONTEXT_KEY]

    async def queue_exists(self, name: str) -> bool:
        # Known queues are cached for a few seconds (the hot path asks on every call); unknown names
        # always go to the database, so a queue created by the operator is usable at once.
        if text_problem(name) or len(name) > 1000:  # not storable text (NUL, lone surrogate); no queue is that long
            return False
        now = time.monotonic()
        if self._queue_cache.get(name, 0.0) > now:
            return True
        exists = await self.db.queue_exists(name)
        if exists:
            if len(self._queue_cache) > 10_000:
                self._queue_cache.clear()
            self._queue_cache[name] = now + 5.0
        return exists

    def forget_queue(self, name: str) -> None:
        self._queue_cache.pop(name, None)

    def public_base_url(self, request: web.Request) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    def csrf_token(self) -> str:
        # Not enforced (classic XQueue exempts every mutating view); newer watchers just want the cookie.
        return hmac.new(self.signing_key.encode(), str(time.time_ns()).encode(), hashlib.sha256).hexdigest()[:32]


def client_ip(request: web.Request) -> str:
    """The client's address; forwarded headers count only from XQUEUE_TRUSTED_PROXIES."""
    trusted = parse_networks(AppContext.of(request).settings.trusted_proxies)
    return client_address(request.remote, request.headers, trusted, request.headers.getall("X-Forwarded-For", ()))
