"""Callback delivery fairness: one LMS that hangs, or never accepts connections, must not delay the
callbacks of the other LMSes, and its own callbacks are delivered once it recovers.

Every LMS here is a real server on 127.0.0.1: aiohttp apps that answer, one that accepts requests
and never answers until told to, and a listening socket whose accept queue is full (so connection
attempts to it get no answer at all).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.integration.clients import GRADE, GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server.testing import Callback, FakeLMS, LoopThread, ServerThread

HEALTHY_LMSES = 3
PER_HEALTHY = 5


class HungLMS:
    """Accepts callbacks and holds them without answering until ``recover()``; then answers 200.

    ``open_now`` is how many requests it is holding, ``most_open`` the highest that ever was.
    """

    def __init__(self) -> None:
        self.open_now = 0
        self.most_open = 0
        self.delivered: set[str] = set()
        self._lock = threading.Lock()
        self._thread = LoopThread("hung-lms")
        self._recovered: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self.url = self._thread.call(self._start())

    async def _start(self) -> str:
        self._recovered = asyncio.Event()
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._recovered is not None
        form = await request.post()
        with self._lock:
            self.open_now += 1
            self.most_open = max(self.most_open, self.open_now)
        try:
            await self._recovered.wait()
        finally:
            with self._lock:
                self.open_now -= 1
        with self._lock:
            self.delivered.add(str(form["xqueue_header"]))
        return web.Response(text="")

    def recover(self) -> None:
        assert self._recovered is not None
        self._thread.loop.call_soon_threadsafe(self._recovered.set)

    def stop(self) -> None:
        self.recover()
        if self._runner is not None:
            self._thread.call(self._runner.cleanup())
        self._thread.close()


class NeverAcceptingHost:
    """A listening socket on 127.0.0.1 that never accepts: its accept queue (backlog 0) is filled with
    connections of our own, so the kernel drops further connection attempts (SYN without an answer),
    which is what an LMS behind a dead load balancer looks like."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.fillers: list[socket.socket] = []
        for _ in range(8):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(filler)
        assert not self.accepts_connections(), "the accept queue should be full"

    def accepts_connections(self) -> bool:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def close(self) -> None:
        for filler in self.fillers:
            filler.close()
        self.listener.close()


@pytest.fixture
def hung_lms() -> Iterator[HungLMS]:
    lms = HungLMS()
    yield lms
    lms.stop()


@pytest.fixture
def healthy_lmses() -> Iterator[list[FakeLMS]]:
    lmses = [FakeLMS() for _ in range(HEALTHY_LMSES)]
    yield lmses
    for lms in lmses:
        lms.stop()


def grade_cycle(lms: LMSClient, grader: GraderClient, callback_url: str) -> str:
    """Submit, pull and put a result: the server now holds a callback to ``callback_url``."""
    key, _ = lms.submit("test-pull", callback_url)
    item = grader.pull("test-pull")
    assert item is not None
    assert grader.put_result(item["xqueue_header"], GRADE) == {"return_code": 0, "content": ""}
    return key


async def _pending_callbacks(database_url: str, url_prefix: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT id, attempts, last_error FROM callbacks "
                                "WHERE state = 'pending' AND url LIKE $1 || '%'", url_prefix)
        return [dict(r) for r in rows]
    finally:
        await conn.close()


def pending_callbacks(server: ServerThread, url_prefix: str) -> list[dict[str, Any]]:
    return asyncio.run(_pending_callbacks(server.settings.database_url or "", url_prefix))


def wait_for_keys(lmses: list[FakeLMS], keys: dict[int, set[str]], timeout: float) -> float:
    """Wait until every healthy LMS got its callbacks; returns when the last one arrived (time.time)."""
    last = 0.0
    for index, lms in enumerate(lmses):
        def all_arrived(cbs: list[Callback], i: int = index) -> bool:
            return {c.xqueue_header["lms_key"] for c in cbs} >= keys[i]

        callbacks = lms.wait_for(all_arrived, timeout=timeout)
        last = max([last] + [c.received_at for c in callbacks])
    return last


def test_a_hung_lms_does_not_delay_other_lmses(xqueue_factory: Any, hung_lms: HungLMS,
                                               healthy_lmses: list[FakeLMS]) -> None:
    server = xqueue_factory(callback_concurrency=8, callback_per_host_concurrency=2, callback_timeout_seconds=10,
                            callback_backoff_base_seconds=0.2, callback_backoff_max_seconds=1)
    lms, grader = LMSClient(server), GraderClient(server)
    # The hung LMS's callbacks come first, more of them than there are delivery slots.
    hung_keys = {grade_cycle(lms, grader, f"{hung_lms.url}/courses/x/xqueue/{i}/score_update") for i in range(20)}
    started = time.time()
    healthy_keys: dict[int, set[str]] = {i: set() for i in range(HEALTHY_LMSES)}
    for n in range(PER_HEALTHY):
        for i, healthy in enumerate(healthy_lmses):
            healthy_keys[i].add(grade_cycle(lms, grader, healthy.callback_url(f"h{i}-{n}")))
    last = wait_for_keys(healthy_lmses, healthy_keys, timeout=5)
    latency = last - started
    print(f"\nhealthy LMSes: all {HEALTHY_LMSES * PER_HEALTHY} callbacks within {latency:.2f} s "
          f"of the first healthy put_result, with a hung LMS holding {hung_lms.open_now} requests")
    assert latency < 3.0
    # Meanwhile the hung LMS holds at most its per-host share and none of its callbacks is done.
    assert 1 <= hung_lms.most_open <= 2
    assert hung_lms.delivered == set()
    assert len(pending_callbacks(server, hung_lms.url)) == 20

    hung_lms.recover()
    wait_until_blocking(lambda: len({k for k in hung_keys if any(k in header for header in hung_lms.delivered)}) >= 20,
                        20, "all 20 delivered after recovery", interval=0.1, detail=lambda: len(hung_lms.delivered))
    # Deliveries are marked done in batches (every 20 ms), so the last rows may trail the LMS by a moment.
    wait_until_blocking(lambda: pending_callbacks(server, hung_lms.url) == [], 3, "every delivered row marked",
                        interval=0.05, detail=lambda: pending_callbacks(server, hung_lms.url))


def test_a_host_that_never_accepts_times_out_on_connect(xqueue_factory: Any,
                                                         healthy_lmses: list[FakeLMS]) -> None:
    dead = NeverAcceptingHost()
    try:
        server = xqueue_factory(callback_concurrency=8, callback_per_host_concurrency=2,
                                callback_timeout_seconds=30, callback_connect_timeout_seconds=0.5,
                                callback_backoff_base_seconds=0.1, callback_backoff_max_seconds=0.5)
        lms, grader = LMSClient(server), GraderClient(server)
        dead_keys = {grade_cycle(lms, grader, f"{dead.url}/courses/x/xqueue/{i}/score_update") for i in range(12)}
        started = time.time()
        healthy_keys: dict[int, set[str]] = {i: set() for i in range(HEALTHY_LMSES)}
        for n in range(PER_HEALTHY):
            for i, healthy in enumerate(healthy_lmses):
                healthy_keys[i].add(grade_cycle(lms, grader, healthy.callback_url(f"d{i}-{n}")))
        latency = wait_for_keys(healthy_lmses, healthy_keys, timeout=5) - started
        print(f"\nhealthy LMSes: all callbacks within {latency:.2f} s next to a host that never accepts")
        assert latency < 3.0
        # Attempts to the dead host end after the short connect timeout, not the 30 s read timeout.

        def four_timed_out() -> list[dict[str, Any]] | None:
            pending = pending_callbacks(server, dead.url)
            assert len(pending) == 12
            return pending if sum(1 for row in pending if row["attempts"] >= 1 and row["last_error"]) >= 4 else None

        pending = wait_until_blocking(four_timed_out, 6, "connect attempts to time out quickly", interval=0.1,
                                      detail=lambda: pending_callbacks(server, dead.url))
        assert any("Timeout" in (row["last_error"] or "") for row in pending)

        # The host comes back (something starts accepting on that socket): nothing was lost.
        recovered = FakeLMS(port=0)
        try:
            runner_thread = recovered._thread
            runner_thread.call(_serve_on(recovered, dead.listener))
            for filler in dead.fillers:
                filler.close()
            recovered.wait_for(lambda cbs: {c.xqueue_header["lms_key"] for c in cbs} >= dead_keys, timeout=20)
            wait_until_blocking(lambda: not pending_callbacks(server, dead.url), 5, "every callback marked delivered",
                                interval=0.1, detail=lambda: pending_callbacks(server, dead.url))
        finally:
            recovered.stop()
    finally:
        dead.close()


async def _serve_on(lms: FakeLMS, sock: socket.socket) -> None:
    """Let ``lms``'s app also serve on an existing listening socket."""
    assert lms._runner is not None
    site = web.SockSite(lms._runner, sock)
    await site.start()


async def _hosts_of(database_url: str, urls: list[str]) -> list[str]:
    """The host column the database derives for each URL (inserted and rolled back)."""
    conn = await asyncpg.connect(database_url)
    transaction = conn.transaction()
    await transaction.start()
    try:
        return [await conn.fetchval(
            "INSERT INTO callbacks (kind, url, xqueue_header, xqueue_body, next_attempt_at)"
            " VALUES ('grade', $1, '{}', '{}', now() + interval '1 hour') RETURNING host", url) for url in urls]
    finally:
        await transaction.rollback()
        await conn.close()


def test_the_host_of_a_callback_is_its_lower_cased_host_and_port(xqueue: ServerThread) -> None:
    urls = ["HTTP://User:Secret@LMS.Example.com:8443/courses/x?y=1#z", "https://lms.example.com/a/b",
            "http://[::1]:8000/cb", "http://10.0.0.5:80"]
    hosts = asyncio.run(_hosts_of(xqueue.settings.database_url or "", urls))
    # No credentials in the key (it may be logged); the port is part of it, as written.
    assert hosts == ["lms.example.com:8443", "lms.example.com", "[::1]:8000", "10.0.0.5:80"]
