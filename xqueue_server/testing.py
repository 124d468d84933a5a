"""Harness pieces shared by the tests, the benchmark and the local demo (like ``kopf.testing``).

- ``ServerThread``: the real XQueue app on 127.0.0.1 in a background thread with its own event loop,
  so callers can use blocking clients (``requests``, like the LMS and xqueue-watcher) or their own loop.
- ``FakeLMS``: a real aiohttp server (127.0.0.1 by default) that receives callbacks like the LMS's
  ``xqueue_callback`` view, records them, and can be told to fail.
- ``create_database``: a fresh database in a running PostgreSQL cluster, so servers are isolated.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from .app import create_app
from .auth import hash_password
from .config import Settings, load_settings
from .db import Database

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


async def _create_database(cluster_url: str, name: str) -> str:
    conn = await asyncpg.connect(cluster_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return cluster_url.rsplit("/", 1)[0] + "/" + name


def create_database(cluster_url: str, prefix: str = "xq") -> str:
    """Create an empty database next to ``cluster_url``'s and return its URL."""
    return asyncio.run(_create_database(cluster_url, f"{prefix}_{uuid.uuid4().hex[:12]}"))


@dataclass
class Account:
    username: str
    password: str


@dataclass
class ServerThread:
    """A running XQueue server; ``url`` is its base URL (no trailing slash)."""

    settings: Settings
    admin: Account = field(default_factory=lambda: Account("admin", "admin-password"))
    lms: Account = field(default_factory=lambda: Account("lms", "lms-password"))
    grader: Account = field(default_factory=lambda: Account("grader", "grader-password"))
    url: str = ""
    _thread: LoopThread | None = None
    _runner: web.AppRunner | None = None

    @classmethod
    def start(cls, database_url: str, queues: tuple[str, ...] = ("test-pull",), **overrides: Any) -> ServerThread:
        overrides.setdefault("port", 0)
        overrides.setdefault("log_level", "WARNING")
        overrides.setdefault("storage_dir", tempfile.mkdtemp(prefix="xqueue-files-"))
        settings = load_settings(env={}, database_url=database_url, queues=queues, **overrides)
        server = cls(settings=settings)
        server._thread = LoopThread("xqueue-server")
        server._thread.call(server._start())
        return server

    async def _start(self) -> None:
        self._runner = web.AppRunner(create_app(self.settings), access_log=None, shutdown_timeout=5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.settings.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        db = await Database.connect(self.settings.database_url or "", 1, 2)
        try:
            await db.upsert_account(self.admin.username, hash_password(self.admin.password), is_admin=True)
            await db.upsert_account(self.lms.username, hash_password(self.lms.password))
            await db.upsert_account(self.grader.username, hash_password(self.grader.password))
        finally:
            await db.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the server's loop (e.g. a direct database check)."""
        assert self._thread is not None
        return self._thread.call(coro, timeout)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._runner is not None:
            self._thread.call(self._runner.cleanup())
        self._thread.close()
        self._thread = None


@dataclass
class Callback:
    path: str
    xqueue_header: dict[str, Any]
    xqueue_body: dict[str, Any] | str
    raw_header: str
    raw_body: str
    received_at: float


class FakeLMS:
    """Receives XQueue callbacks at ``{url}/<anything>`` like edx-platform's xqueue_callback view.

    ``status`` (or ``responder``) decides the HTTP status to answer, so tests can take the LMS down.
    ``host``/``port`` are where it listens (127.0.0.1, a free port); ``advertise_host`` is the address
    put into ``url`` and callback URLs when that differs, e.g. the pod IP when listening on 0.0.0.0.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 advertise_host: str | None = None) -> None:
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        self.advertise_host = advertise_host or host
        self.callbacks: list[Callback] = []
        self.attempts = 0
        self.status = 200
        self.delay = 0.0
        self.url = ""
        self._thread = LoopThread("fake-lms")
        self._runner: web.AppRunner | None = None
        self._cond = threading.Condition()
        self._thread.call(self._start())

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        with self._cond:
            self.attempts += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        header, body = form.get("xqueue_header"), form.get("xqueue_body")
        if not isinstance(header, str) or not isinstance(body, str):
            raise web.HTTPNotFound()  # what the LMS view does with missing keys
        if self.status != 200:
            return web.Response(status=self.status, text="LMS unavailable")
        try:
            parsed_body: dict[str, Any] | str = json.loads(body)
        except ValueError:
            parsed_body = body
        with self._cond:
            self.callbacks.append(Callback(request.path, json.loads(header), parsed_body, header, body, time.time()))
            self._cond.notify_all()
        return web.Response(text="")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        # A short shutdown timeout: a test may leave a deliberately slow request hanging.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        host = f"[{self.advertise_host}]" if ":" in self.advertise_host else self.advertise_host  # IPv6 literal
        self.url = f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    def callback_url(self, name: str) -> str:
        return f"{self.url}/courses/demo/xqueue/1/{name}/score_update"

    def wait_for(self, predicate: Callable[[list[Callback]], bool], timeout: float = 10.0) -> list[Callback]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.callbacks):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"fake LMS: condition not met in {timeout} s; got {len(self.callbacks)}")
                self._cond.wait(remaining)
            return list(self.callbacks)

    def for_key(self, lms_key: str) -> list[Callback]:
        with self._cond:
            return [c for c in self.callbacks if c.xqueue_header.get("lms_key") == lms_key]

    def stop(self) -> None:
        self.delay = 0.0
        if self._runner is not None:
            self._thread.call(self._runner.cleanup())
        self._thread.close()
