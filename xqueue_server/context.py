"""Per-application state shared by the handlers, and request helpers (who is calling, from where)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass, field

from aiohttp import web

from .abuse import throttled_error
from .auth import Authenticator, LoginThrottled
from .client_address import client_address, parse_networks
from .config import Settings
from .db import Account, Database
from .metrics import Metrics
from .storage import Storage
from .validation import text_problem
from .waiters import QueueWaiters

CONTEXT_KEY: web.AppKey[AppContext] = web.AppKey("xqueue_context")
ACCOUNT_KEY: web.RequestKey[Account | None] = web.RequestKey("xqueue_account", Account | None)  # type: ignore[arg-type]


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


def set_session_cookie(response: web.Response, secret: str, settings: Settings) -> None:
    response.set_cookie(
        "sessionid", secret, max_age=settings.session_max_age_seconds, httponly=True, samesite="Lax",
        secure=settings.session_cookie_secure, path="/",
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


async def current_account(request: web.Request) -> Account | None:
    """The caller's account from its session cookie, Bearer token or HTTP Basic credentials.

    The session is tried first: the LMS may also send Basic credentials meant for a fronting proxy,
    which must not hide a valid session.
    """
    if ACCOUNT_KEY in request:
        return request[ACCOUNT_KEY]
    ctx = AppContext.of(request)
    account: Account | None = None
    secret = request.cookies.get("sessionid")
    if secret and len(secret) < 200:
        account = await ctx.auth.session(secret)
    header = request.headers.get("Authorization", "")
    if account is None and header[:7].lower() == "bearer " and len(header) < 500:
        account = await ctx.auth.token(header[7:].strip())
    if account is None and header[:6].lower() == "basic " and len(header) < 1000:
        credentials = _basic_credentials(header)
        if credentials is not None:
            try:
                account = await ctx.auth.basic(*credentials, client_ip(request))
            except LoginThrottled as exc:
                raise throttled_error(request.path, exc.message, exc.retry_after) from None
    request[ACCOUNT_KEY] = account
    return account
