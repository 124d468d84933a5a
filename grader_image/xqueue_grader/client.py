"""Asynchronous XQueue client speaking the classic protocol the way xqueue-watcher does.

* session cookie from ``POST /xqueue/login/`` (skipped when no username is configured); a
  ``GET /xqueue/login/`` first picks up a CSRF cookie from servers that want one, and the token
  then goes along as ``X-CSRFToken`` with a ``Referer`` (harmless for classic XQueue);
* redirects are never followed: 301/302 (classic "not logged in") and 401/403 (newer servers)
  trigger one re-login and one retry of that request, never more;
* every reply is the envelope ``{"return_code", "content"}`` or the legacy ``{"success", ...}``;
* errors come back as values (``RequestOutcome``), so the daemon's loops decide how to back off.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from xqueue_grader.protocol import ProtocolError, parse_server_reply

log = logging.getLogger("xqueue_grader.client")

RELOGIN_STATUSES = (301, 302, 401, 403)
CSRF_COOKIES = ("csrftoken", "edx-csrftoken")


# ok, rejected (return_code 1), timeout, connection, http (another status), protocol (not an
# XQueue envelope), login (a re-login failed).
RequestKind = Literal["ok", "rejected", "timeout", "connection", "http", "protocol", "login"]


@dataclass(frozen=True)
class RequestOutcome:
    """Result of one protocol request (``content``: the envelope's content, or what went wrong)."""

    ok: bool
    content: Any
    kind: RequestKind
    elapsed: float = 0.0


class XQueueClient:
    def __init__(
        self,
        server_url: str,
        queue: str,
        username: str | None = None,
        password: str | None = None,
        *,
        basic_auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        verify_tls: bool = True,
    ) -> None:
        self.server_url = server_url.rstrip("/")
        self.queue = queue
        self.username = username
        self._password = password
        # HTTP Basic auth for a fronting proxy, sent with every request (like the watcher's
        # HTTP_BASIC_AUTH); built by hand because aiohttp's auth= parameter is deprecated.
        self._auth_headers: dict[str, str] = {}
        if basic_auth:
            token = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode()).decode("ascii")
            self._auth_headers = {"Authorization": "Basic " + token}
        self.timeout = timeout
        self._ssl = verify_tls  # True: aiohttp's default verification
        self._headers: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._login_lock = asyncio.Lock()
        self.logged_in = False
        self.logins = 0

    async def __aenter__(self) -> XQueueClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # unsafe=True: accept cookies from IP-address hosts (in-cluster IPs, 127.0.0.1).
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def login(self) -> bool:
        """Log in (or do nothing without a username); concurrent callers share one attempt."""
        if self.username is None:
            return True
        generation = self.logins
        async with self._login_lock:
            if self.logins != generation and self.logged_in:
                return True  # another slot logged in while we waited
            return await self._login()

    async def _login(self) -> bool:
        session = self._client()
        url = self.server_url + "/xqueue/login/"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        # Old session cookies would be sent along and may confuse the server: start afresh.
        session.cookie_jar.clear()
        self._headers = {}
        try:
            async with session.get(url, headers=self._auth_headers, allow_redirects=False, timeout=timeout,
                                   ssl=self._ssl) as resp:
                await resp.read()
            token = self._csrf_token()
            headers = {"X-CSRFToken": token, "Referer": url} if token else {}
            async with session.post(url, data={"username": self.username, "password": self._password or ""},
                                    headers={**self._auth_headers, **headers}, allow_redirects=False,
                                    timeout=timeout, ssl=self._ssl) as resp:
                status = resp.status
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("login request failed", extra={"fields": {"error": type(exc).__name__}})
            self.logged_in = False
            return False
        ok = False
        if status == 200:
            try:
                ok = parse_server_reply(text).ok
            except ProtocolError:
                ok = False
        if not ok:
            log.warning("login refused", extra={"fields": {"status": status, "username": self.username}})
            self.logged_in = False
            return False
        token = self._csrf_token()
        if token:
            self._headers = {"X-CSRFToken": token, "Referer": self.server_url + "/"}
        self.logged_in = True
        self.logins += 1
        return True

    def _csrf_token(self) -> str | None:
        session = self._client()
        for cookie in session.cookie_jar:
            if cookie.key in CSRF_COOKIES and cookie.value:
                return cookie.value
        return None

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      data: dict[str, str] | None = None, seconds: float | None = None) -> RequestOutcome:
        url = self.server_url + path
        relogged = False
        started = time.monotonic()
        total = self.timeout if seconds is None else seconds
        while True:
            session = self._client()
            try:
                async with session.request(
                    method, url, params=params, data=data, headers={**self._auth_headers, **self._headers},
                    allow_redirects=False, timeout=aiohttp.ClientTimeout(total=total), ssl=self._ssl,
                ) as resp:
                    status = resp.status
                    text = await resp.text(errors="replace")
            except TimeoutError:
                return RequestOutcome(False, f"Request to {url} timed out", "timeout", time.monotonic() - started)
            except aiohttp.ClientError:
                return RequestOutcome(False, f"Could not connect to server at {url}", "connection",
                               time.monotonic() - started)
            elapsed = time.monotonic() - started
            if status == 200:
                try:
                    reply = parse_server_reply(text)
                except ProtocolError as exc:
                    return RequestOutcome(False, str(exc), "protocol", elapsed)
                return RequestOutcome(reply.ok, reply.content, "ok" if reply.ok else "rejected", elapsed)
            if status in RELOGIN_STATUSES and not relogged:
                relogged = True
                self.logged_in = False
                if await self.login():
                    continue
                return RequestOutcome(False, "Could not log in", "login", elapsed)
            return RequestOutcome(False, f"Received unexpected response status code, {status}, calling {url}.",
                           "http", elapsed)

    async def get_submission(self, wait: float | None = None) -> RequestOutcome:
        """Pull one submission; ``wait`` asks a long-poll capable server to hold the request.

        Cancelling this call closes its connection (aiohttp never reuses one whose answer is unread),
        so the server sees at once that this grader stopped waiting; the daemon's drain relies on it."""
        params = {"queue_name": self.queue}
        seconds = self.timeout
        if wait:
            params["wait"] = str(int(wait)) if float(wait).is_integer() else str(wait)
            seconds = self.timeout + float(wait)
        return await self.request("GET", "/xqueue/get_submission/", params=params, seconds=seconds)

    async def put_result(self, form: dict[str, str]) -> RequestOutcome:
        return await self.request("POST", "/xqueue/put_result/", data=form)

