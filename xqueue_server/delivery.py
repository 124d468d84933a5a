"""Durable callback delivery: the outbox worker that POSTs grades (and failure notices) to the LMS.

``put_result`` records the reply and an outbox row in one statement. The first attempt is normally
made at once by the process that recorded it (``deliver_now``): the row is stored already claimed,
so the hot path costs no NOTIFY, no claim query and no wait for the worker. Every later attempt, and
any first attempt the process could not make (it stopped or crashed, or the LMS host is at its bound),
goes through the outbox worker, with exponential backoff and jitter until the LMS answers HTTP 200 or
the horizon passes (then the row is dead-lettered, visible in ``xqueue-admin dead-letters`` and in
metrics). Any number of server replicas can run it: rows are claimed with SKIP LOCKED and stay
invisible while being tried. Successful deliveries that finish close together are marked in one
statement (``_mark_delivered``); a crash before that mark only means a repeated callback, which the
at-least-once contract allows.

Fairness: several LMSes may share one server. Each LMS host (host:port of the callback URL) has at
most ``callback_per_host_concurrency`` deliveries in flight per process, and the claim skips hosts
that are at their bound, so an LMS that accepts connections and never answers holds a few slots
(its rows back off after each timed-out attempt) while every other LMS keeps its callbacks flowing.
A host that does not complete the TCP handshake fails after the short connect timeout. Within a
host, callbacks go in the order their grades came: over the host's bound they wait in the process
for a slot (briefly, a bounded number), and a freed slot goes to the oldest callback, whether it
waits here or was handed to the outbox (``_fill_slots``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import urllib.parse
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

from .config import Settings
from .db import Database, DueCallback
from .logs import error_fields
from .metrics import Metrics
from .outage import DatabaseUnavailable

log = logging.getLogger("xqueue.delivery")
INVISIBLE_MARGIN_SECONDS = 5.0  # a claimed row stays invisible this much longer than one attempt may take
# An inline callback waits in this process for a slot of its host at most this long, and at most this
# many per slot wait; beyond either it goes to the outbox. Far below the claim's invisibility
# (callback_timeout_seconds + INVISIBLE_MARGIN_SECONDS), so no other replica sends it meanwhile.
INLINE_WAIT_SECONDS = 5.0
INLINE_WAITING_PER_SLOT = 16
MARK_WINDOW_SECONDS = 0.02  # successful deliveries are marked in batches gathered over this long


def backoff_delay(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``attempts`` failed tries: exponential, capped, half jitter."""
    exponent = min(max(attempts - 1, 0), 30)
    ceiling = min(cap, base * (2**exponent))
    draw = rng.random() if rng is not None else random.random()
    return ceiling * (0.5 + draw / 2)


def next_step(age_seconds: float, attempts: int, settings: Settings, rng: random.Random | None = None) -> float | None:
    """Seconds until the next attempt, or None when the horizon has passed and the row is dead."""
    remaining = settings.callback_horizon_seconds - age_seconds
    if remaining <= 0:
        return None
    delay = backoff_delay(attempts, settings.callback_backoff_base_seconds, settings.callback_backoff_max_seconds, rng)
    return min(delay, remaining)


def describe_failure(exc: BaseException, settings: Settings) -> str:
    """A failed attempt in words. Timeouts get a fixed text: aiohttp's names the whole URL, which may
    carry credentials, and says nothing about which limit was hit."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"{name}: no connection within {settings.callback_connect_timeout_seconds:g} s"
    if isinstance(exc, TimeoutError):
        return f"{name}: no answer within {settings.callback_timeout_seconds:g} s"
    return f"{name}: {exc}"


_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


class CallbackDeliverer:
    def __init__(self, db: Database, settings: Settings, metrics: Metrics) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.wakeup = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], str] = {}  # in-flight delivery -> its host
        self._per_host: dict[str, int] = {}  # host -> deliveries in flight
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._delivered_ids: list[int] = []  # successful deliveries waiting for the next batch mark
        self._marker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._slots_limited = True  # see _run_once
        # Inline callbacks waiting for a slot of their host: host -> (callback, since).
        self._inline_waiting: dict[str, deque[tuple[DueCallback, float]]] = {}
        # Per host, when each callback this process handed to the outbox for want of a slot had arrived
        # (oldest first), and how many of those hand-backs are still being written (see _fill_slots).
        self._handed_back: dict[str, deque[float]] = {}
        self._handing_back: dict[str, int] = {}

    def stop(self) -> None:
        """Finish the current claim and in-flight attempts, then return from ``run``."""
        self._stopping = True
        self.wakeup.set()

    def notify(self, _payload: str = "") -> None:
        self.wakeup.set()

    def inline_claim_seconds(self) -> float | None:
        """How long record_result should claim a new callback for ``deliver_now``; None when this
        process cannot deliver now (not running, stopping, every slot busy): the outbox gets it."""
        if self._session is None or self._stopping or len(self._tasks) >= self.settings.callback_concurrency:
            return None
        return self.settings.callback_timeout_seconds + INVISIBLE_MARGIN_SECONDS

    def deliver_now(self, callback: DueCallback) -> None:
        """First attempt of a callback record_result claimed for this process, within the same bounds as
        the outbox (total and per LMS host). A host's callbacks go in the order their grades came:
        over the host's bound a callback waits here, briefly, behind the others (``_fill_slots``)."""
        if self._session is None or self._stopping or len(self._tasks) >= self.settings.callback_concurrency:
            self._spawn(self._unclaim(callback))
            return
        host = callback.host
        waiting = self._inline_waiting.setdefault(host, deque())
        if len(waiting) >= INLINE_WAITING_PER_SLOT * self.settings.callback_per_host_concurrency:
            self._hand_back(callback, time.monotonic())
        else:
            waiting.append((callback, time.monotonic()))
        self._fill_slots(host)

    def _fill_slots(self, host: str) -> None:
        """Give the free slots of ``host`` to its oldest callbacks: those waiting here, or those handed
        to the outbox earlier, whichever arrived first (for the outbox, the worker is woken to claim).

        Without the comparison a steady stream of new grades would take every freed slot, and the
        outbox rows would wait for a lull (the server benchmark at 64 clients saw a p99 of seconds
        beside a p50 of 27 ms). Waiting here costs nothing; only what waits too long, or beyond the
        bound, takes the outbox's extra statements. Stale waiting callbacks (a hanging LMS) go to the
        outbox, so no claimed row is held here for long."""
        limit = self.settings.callback_per_host_concurrency
        waiting = self._inline_waiting.get(host)
        handed_back = self._handed_back.get(host)
        now = time.monotonic()
        while waiting and (self._stopping or now - waiting[0][1] > INLINE_WAIT_SECONDS):
            callback, since = waiting.popleft()
            if self._stopping:
                self._spawn(self._unclaim(callback))
            else:
                self._hand_back(callback, since)
        while self._per_host.get(host, 0) < limit and not self._stopping:
            if handed_back and (not waiting or handed_back[0] <= waiting[0][1]):
                self.wakeup.set()  # the outbox has this host's oldest: the worker claims it for the slot
                break
            if not waiting:
                break
            self._start(waiting.popleft()[0])
        if not waiting:
            self._inline_waiting.pop(host, None)

    def _hand_back(self, callback: DueCallback, since: float) -> None:
        """Give a callback's first attempt to the outbox for want of a slot of its host."""
        host = callback.host
        self._handed_back.setdefault(host, deque()).append(since)
        self._handing_back[host] = self._handing_back.get(host, 0) + 1

        async def hand_back() -> None:
            try:
                await self._unclaim(callback)
            finally:
                left = self._handing_back.get(host, 1) - 1
                if left > 0:
                    self._handing_back[host] = left
                else:
                    self._handing_back.pop(host, None)

        self._spawn(hand_back())

    def _start(self, callback: DueCallback) -> None:
        task = asyncio.create_task(self._deliver(callback))
        self._tasks[task] = callback.host
        self._per_host[callback.host] = self._per_host.get(callback.host, 0) + 1
        task.add_done_callback(self._task_done)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unclaim(self, callback: DueCallback) -> None:
        try:
            await self.db.unclaim_callback(callback.id)
        except Exception as exc:  # the row comes back after its invisibility window instead
            if not isinstance(exc, DatabaseUnavailable):
                log.warning("could not hand a callback to the outbox", extra={"fields": {
                    "callback_id": callback.id, **error_fields(exc)}})

    def _mark_delivered(self, callback_id: int) -> None:
        """Mark a delivered callback soon: ids delivered within ``MARK_WINDOW_SECONDS`` share one
        statement and commit. Until then the row stays claimed; should this process die first, the
        LMS gets the callback again, which the at-least-once contract allows."""
        self._delivered_ids.append(callback_id)
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._mark_batches())

    async def _mark_batches(self) -> None:
        while self._delivered_ids:
            if not self._stopping:
                await asyncio.sleep(MARK_WINDOW_SECONDS)
            ids, self._delivered_ids = self._delivered_ids, []
            try:
                await self.db.mark_callbacks_delivered(ids)
            except DatabaseUnavailable:
                pass  # the rows come back after their invisibility window; the outage is logged once
            except Exception as exc:
                log.warning("could not mark callbacks delivered; they will be sent again", extra={"fields": {
                    "callbacks": len(ids), **error_fields(exc)}})

    async def run(self) -> None:
        auth = None
        if self.settings.callback_basic_auth:
            user, _, password = self.settings.callback_basic_auth.partition(":")
            auth = aiohttp.BasicAuth(user, password)
        connector = aiohttp.TCPConnector(limit=self.settings.callback_concurrency * 2,
                                         ssl=self.settings.callback_verify_tls)
        # The connect timeout is separate and short: a host that never completes the handshake must not
        # hold a slot for the whole attempt timeout.
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout_seconds,
                                        sock_connect=self.settings.callback_connect_timeout_seconds,
                                        sock_read=self.settings.callback_timeout_seconds)
        # Callbacks carry no cookies (upstream posts each one on its own) and their reply is only
        # checked for 200: no cookie jar to filter per request, no decompression of an unread body.
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auth=auth,
                                         cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False) as session:
            self._session = session
            try:
                while not self._stopping:
                    await self._run_once()
                for waiting in self._inline_waiting.values():  # back to the outbox for another replica
                    for callback, _since in waiting:
                        self._spawn(self._unclaim(callback))
                self._inline_waiting.clear()
                if self._tasks or self._background:
                    await asyncio.wait([*self._tasks, *self._background],
                                       timeout=self.settings.callback_timeout_seconds)
                if self._marker is not None and not self._marker.done():
                    await asyncio.wait([self._marker], timeout=5)  # deliveries made are recorded
            finally:
                self._session = None
                pending = [*self._tasks, *self._background, *([self._marker] if self._marker else [])]
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)

    async def _run_once(self) -> None:
        self.wakeup.clear()
        free = self.settings.callback_concurrency - len(self._tasks)
        limit = self.settings.callback_per_host_concurrency
        in_flight = dict(self._per_host)
        due: list[DueCallback] = []
        claimed = False
        if free > 0:
            try:
                # Invisible long enough for one attempt to finish; a crashed worker's row comes back after.
                due = await self.db.claim_due_callbacks(
                    free, self.settings.callback_timeout_seconds + INVISIBLE_MARGIN_SECONDS, in_flight, limit)
                claimed = True
            except DatabaseUnavailable:
                pass  # a database restart must not kill the worker; the outage is logged once (outage.py)
            except Exception as exc:
                log.warning("outbox claim failed", extra={"fields": error_fields(exc)})
        if claimed:
            self._account_handed_back(due, in_flight, limit, complete=len(due) < free)
        # Whether due rows may have been left because slots were short (all taken, or a host at its
        # bound): only then is a finished delivery a reason to claim again before the next tick.
        self._slots_limited = free <= 0 or len(due) == free or any(n >= limit for n in self._per_host.values())
        for callback in due:
            self._start(callback)
        for host in list(self._inline_waiting):  # slots the claim left free go to callbacks waiting here
            self._fill_slots(host)
        self._report_saturation()
        if (len(due) == free and free > 0) or self._stopping:
            return  # there may be more due right now
        try:
            await asyncio.wait_for(self.wakeup.wait(), timeout=1.0)
        except TimeoutError:
            pass

    def _account_handed_back(self, due: list[DueCallback], in_flight: dict[str, int], limit: int,
                             complete: bool) -> None:
        """The outbox claim took the oldest due rows: for each host, that many hand-backs are served
        (approximately: other replicas' rows and retries count too). A host that got fewer rows than
        it had free slots, in a claim the total bound did not cut short, has nothing due left, so
        what it handed back is gone (unless hand-backs are still being written and not yet visible)."""
        taken: dict[str, int] = {}
        for callback in due:
            taken[callback.host] = taken.get(callback.host, 0) + 1
        for host in list(self._handed_back):
            handed_back = self._handed_back[host]
            for _ in range(min(taken.get(host, 0), len(handed_back))):
                handed_back.popleft()
            drained = complete and taken.get(host, 0) < limit - in_flight.get(host, 0)
            if not handed_back or (drained and not self._handing_back.get(host)):
                del self._handed_back[host]

    def _task_done(self, task: asyncio.Task[None]) -> None:
        host = self._tasks.pop(task, None)
        if host is not None:
            left = self._per_host.get(host, 1) - 1
            if left > 0:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)
            self._fill_slots(host)
        self._report_saturation()
        if self._slots_limited:
            self.wakeup.set()  # a slot is free again, and work may be waiting for one

    def _report_saturation(self) -> None:
        limit = self.settings.callback_per_host_concurrency
        self.metrics.callback_hosts_saturated.set(sum(1 for n in self._per_host.values() if n >= limit))

    async def _deliver(self, callback: DueCallback) -> None:
        assert self._session is not None
        self.metrics.callback_attempts.labels(callback.kind).inc()
        started = time.perf_counter()
        error: str | None = None
        try:
            # Encoded here rather than from a dict: aiohttp's FormData would also set up a multipart
            # writer (a random boundary, regex checks) for every callback only to send it urlencoded.
            body = urllib.parse.urlencode({"xqueue_header": callback.xqueue_header,
                                           "xqueue_body": callback.xqueue_body})
            async with self._session.post(callback.url, data=body.encode(), headers=_FORM_HEADERS) as response:
                await response.read()
                if response.status != 200:
                    error = f"LMS returned status_code={response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            error = f"could not connect to LMS: {describe_failure(exc, self.settings)}"
        except asyncio.CancelledError:
            # Shutting down mid-attempt: hand the row back now instead of after its invisibility window.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.db.schedule_callback_retry(callback.id, 0.0, "interrupted by shutdown"), 2)
            raise
        took = time.perf_counter() - started
        self.metrics.callback_latency.observe(took)
        try:
            if error is None:
                self._mark_delivered(callback.id)
                self.metrics.result_to_delivery.observe(callback.age_seconds)
                # The one INFO line of a submission's life (queued, pulled and recorded log at DEBUG).
                log.info("callback delivered", extra={"fields": {
                    "callback_id": callback.id, "submission_id": callback.submission_id, "kind": callback.kind,
                    "attempts": callback.attempts, "seconds": round(took, 4)}})
                return
            self.metrics.callback_failures.labels(callback.kind).inc()
            delay = next_step(callback.age_seconds, callback.attempts, self.settings)
            if delay is None:
                await self.db.mark_callback_dead(callback.id, error)
                self.metrics.callback_dead.inc()
                log.error("callback dead-lettered", extra={"fields": {
                    "callback_id": callback.id, "submission_id": callback.submission_id,
                    "attempts": callback.attempts, "error": error}})
            else:
                await self.db.schedule_callback_retry(callback.id, delay, error)
                log.warning("callback failed; will retry", extra={"fields": {
                    "callback_id": callback.id, "submission_id": callback.submission_id,
                    "host": callback.host, "attempts": callback.attempts, "retry_in_seconds": round(delay, 2),
                    "error": error}})
        except DatabaseUnavailable:
            pass  # the row stays claimed and comes back after its invisibility window; outage logged once
        except Exception as exc:  # the same; the message of a database error may quote row data
            log.warning("could not record callback outcome", extra={"fields": {
                "callback_id": callback.id, **error_fields(exc)}})


DELIVERER_KEY: web.AppKey[CallbackDeliverer] = web.AppKey("xqueue_deliverer", CallbackDeliverer)
