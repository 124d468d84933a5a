"""A small but real classic-XQueue HTTP server on 127.0.0.1 for client and daemon tests.

It answers the way upstream XQueue (Django) does: the JSON envelope with HTTP 200 for application
errors, 302 to ``/xqueue/login/?next=...`` for requests without a session, ``login_required`` for
``GET /xqueue/login/``, and a pulled submission as a JSON *string*.  Switches let tests emulate a
long-poll capable server, newer servers answering 401/403, the legacy ``{"success": ...}``
envelope, CSRF cookies, expired sessions and failing ``put_result`` calls.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

from aiohttp import web

from .helpers import wait_until


@dataclass
class Recorded:
    path: str
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class FakeXQueue:
    username: str = "grader"
    password: str = "secret"
    queue: str = "test-queue"
    supports_wait: bool = False
    unauth_status: int = 302  # 401 or 403 for newer servers
    legacy_envelope: bool = False
    csrf: bool = False
    put_failures: int = 0  # answer this many put_result calls with HTTP 500 first
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    results: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pulled: list[int] = field(default_factory=list)
    logins: int = 0
    sessions: set[str] = field(default_factory=set)
    _pending: deque[dict[str, Any]] = field(default_factory=deque)
    _next_id: int = 1
    _keys: dict[int, str] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/xqueue/login/", self._login)
        app.router.add_get("/xqueue/get_submission/", self._get_submission)
        app.router.add_post("/xqueue/put_result/", self._put_result)
        # Parked long-poll handlers must not hold up the test's teardown.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    # -- test controls ---------------------------------------------------------------------------
    def submit(self, body: dict[str, Any] | str, files: str = "{}") -> int:
        """Queue a submission as the LMS would have; returns its id."""
        submission_id = self._next_id
        self._next_id += 1
        self._pending.append({"id": submission_id, "body": body if isinstance(body, str) else json.dumps(body),
                              "files": files})
        self._arrived.set()
        return submission_id

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.path == path)

    def result_for(self, submission_id: int) -> list[dict[str, Any]]:
        return [body for header, body in self.results if json.loads(header)["submission_id"] == submission_id]

    async def wait_results(self, count: int, seconds: float = 20.0) -> None:
        await wait_until(lambda: len(self.results) >= count, seconds, f"{count} results", interval=0.02,
                         detail=lambda: f"{len(self.results)} results")

    # -- protocol ----------------------------------------------------------------------------------
    def _reply(self, ok: bool, content: Any, **extra: Any) -> web.Response:
        if self.legacy_envelope:
            data = {"success": ok, "content": content, **extra}
        else:
            data = {"return_code": 0 if ok else 1, "content": content}
        # Upstream answers with Django's default content type, not application/json.
        return web.Response(text=json.dumps(data), content_type="text/html")

    def _record(self, request: web.Request, form: dict[str, str] | None = None) -> None:
        self.requests.append(Recorded(request.path, request.method, dict(request.query),
                                      dict(request.headers), form or {}))

    def _authenticated(self, request: web.Request) -> bool:
        return request.cookies.get("sessionid") in self.sessions

    def _unauthenticated(self, request: web.Request) -> web.Response:
        if self.unauth_status == 302:
            raise web.HTTPFound("/xqueue/login/?next=" + quote(request.path_qs))
        return web.Response(status=self.unauth_status, text="unauthorized")

    async def _login(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            self._record(request)
            response = self._reply(False, "login_required")
            if self.csrf:
                response.set_cookie("csrftoken", "csrf-token-123")
            return response
        form = {k: str(v) for k, v in (await request.post()).items()}
        self._record(request, {k: v for k, v in form.items() if k != "password"})
        self.logins += 1
        if self.csrf and request.headers.get("X-CSRFToken") != "csrf-token-123":
            return web.Response(status=403, text="CSRF verification failed")
        if "password" not in form:
            return self._reply(False, "Insufficient login info")
        if form.get("username") != self.username or form["password"] != self.password:
            return self._reply(False, "Incorrect login credentials")
        session = secrets.token_hex(8)
        self.sessions.add(session)
        response = self._reply(True, "Logged in")
        response.set_cookie("sessionid", session, httponly=True)
        return response

    async def _get_submission(self, request: web.Request) -> web.Response:
        self._record(request)
        if not self._authenticated(request):
            return self._unauthenticated(request)
        queue = request.query.get("queue_name")
        if queue is None:
            return self._reply(False, "'get_submission' must provide parameter 'queue_name'")
        if queue != self.queue:
            return self._reply(False, f"Queue '{queue}' not found")
        wait = float(request.query.get("wait", 0) or 0) if self.supports_wait else 0
        if not self._pending and wait > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout=min(wait, 30))
            except TimeoutError:
                pass
        if not self._pending:
            return self._reply(False, f"Queue '{queue}' is empty")
        item = self._pending.popleft()
        key = secrets.token_hex(16)
        self._keys[item["id"]] = key
        self.pulled.append(item["id"])
        content = {
            "xqueue_header": json.dumps({"submission_id": item["id"], "submission_key": key}),
            "xqueue_body": item["body"],
            "xqueue_files": item["files"],
        }
        if self.legacy_envelope:
            return self._reply(True, None, **content)
        return self._reply(True, json.dumps(content))

    async def _put_result(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self._record(request, form)
        if not self._authenticated(request):
            return self._unauthenticated(request)
        if self.put_failures > 0:
            self.put_failures -= 1
            return web.Response(status=500, text="Xqueue 500 error.")
        try:
            header = json.loads(form["xqueue_header"])
            body = json.loads(form["xqueue_body"])
        except (KeyError, ValueError):
            return self._reply(False, "Incorrect reply format")
        if self._keys.get(int(header["submission_id"])) != header.get("submission_key"):
            return self._reply(False, "Incorrect key for submission")
        self.results.append((form["xqueue_header"], body))
        return self._reply(True, "")
