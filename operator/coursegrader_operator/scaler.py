"""The scaler: one loop for all CourseGraders reads the queue figures and proposes replica counts.

With admin credentials one `GET /api/v1/queues` per server and tick serves every course on it;
otherwise each course's own grader account reads its queue's length. The decision itself is the pure
`scaling.decide()`; this module only gathers figures, keeps ScaleState (its only writer) and asks
the work queue to apply a changed proposal. Nothing is recorded as scaled here: the reconciler
records a scale (time, event) once the Deployment patch has succeeded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import OperatorConfig
from .provisioning import Provisioner
from .scaling import QueueLoad, decide
from .state import Course, Key
from .xqueue import XQueueClient, XQueueError

log = logging.getLogger(__name__)

UNREACHABLE_BACKOFF = 5.0  # seconds a server that did not answer is skipped by other courses


@dataclass(frozen=True)
class MetricsError:
    message: str
    unreachable: bool = False


Reading = QueueLoad | MetricsError
Notify = Callable[[Key, bool], None]  # key, True = the replica proposal changed (else: status only)
Record = Callable[..., None]  # (course, reason, message, warning=False)


class Scaler:
    def __init__(self, config: OperatorConfig, xq: XQueueClient, provisioner: Provisioner,
                 notify: Notify, record: Record, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.xq = xq
        self._provisioner = provisioner
        self._notify = notify
        self._record = record
        self._clock = clock
        # Servers that did not answer at all, until when: other courses on the same server skip
        # their request for a few seconds instead of each waiting for the same connect error.
        self._unreachable: dict[str, tuple[float, str]] = {}
        # The last all-queues reading per server (admin mode), so a new CourseGrader's first status
        # already carries its queue figures instead of needing a second write one tick later.
        self._last_queues: dict[str, tuple[float, dict[str, QueueLoad]]] = {}
        self._down: set[str] = set()  # servers in an outage (logged once when it starts and ends)
        self.ticks = 0

    def prime(self, c: Course) -> None:
        """After a reconcile: seed the window with the running count and take what is already known
        about the server, so the first status write is complete."""
        spec = c.spec.spec
        s = c.scale
        if spec is None or not spec.scaling.enabled:
            return
        if not s.history.samples and c.applied.replicas is not None:
            s.history.add(self._clock(), c.applied.replicas, keep=spec.scaling.scale_down_window)
        if s.load is not None or s.metrics_error is not None:
            return
        url, now = self._provisioner.dial_url(spec), self._clock()
        seen = self._last_queues.get(url)
        down = self._unreachable.get(url)
        if seen is not None and now - seen[0] < 3 * self.config.scale_interval and spec.queue in seen[1]:
            s.load = seen[1][spec.queue]
        elif down is not None and down[0] > now:
            s.metrics_error = down[1]

    async def tick(self, courses: Iterable[Course]) -> None:
        self.ticks += 1
        active = [c for c in courses
                  if c.spec.spec is not None and c.spec.spec.scaling.enabled
                  and c.applied.replicas is not None and not c.deleting]
        if not active:
            return
        readings = await self._read(active)
        self._log_outages(active, readings)
        now = self._clock()
        for c in active:
            reading = readings.get(c.key)
            spec = c.spec.spec
            current = c.applied.replicas
            if spec is None or current is None or reading is None:
                continue  # changed while the requests were out
            s = c.scale
            if isinstance(reading, MetricsError):
                if reading.unreachable and not s.outage:
                    s.outage = True
                    self._record(c, "XQueueUnreachable", f"{reading.message}; holding {current} replica(s)",
                                 warning=True)
                if s.metrics_error != reading.message:
                    s.metrics_error = reading.message
                    self._notify(c.key, False)
                continue
            if s.outage:
                s.outage = False
                self._record(c, "XQueueReachable", "the XQueue server answers again")
            changed = s.metrics_error is not None or s.load is None or reading.queued > 0 or \
                (s.load.queued, s.load.in_flight) != (reading.queued, reading.in_flight)
            s.metrics_error = None
            s.load = reading
            before = s.decision.replicas if s.decision else None
            s.decision = decide(s.history, now, reading, current, spec.slots, spec.scaling)
            if s.decision.replicas != current:
                # Proposed only: applied by the work queue (with its backoff), recorded once applied.
                self._notify(c.key, True)
            elif changed or before != s.decision.replicas:
                # Idle queues that stay idle change nothing in status: no work for 1,000 quiet courses.
                self._notify(c.key, False)

    def _log_outages(self, courses: list[Course], readings: dict[Key, Reading]) -> None:
        """One warning when a server stops answering and one line when it is back, per server."""
        up: set[str] = set()
        down: dict[str, str] = {}
        for c in courses:
            spec = c.spec.spec
            reading = readings.get(c.key)
            if spec is None or reading is None:
                continue
            url = self._provisioner.dial_url(spec)
            if isinstance(reading, QueueLoad):
                up.add(url)
            elif reading.unreachable:
                down.setdefault(url, reading.message)
        for url, message in down.items():
            if url not in up and url not in self._down:
                self._down.add(url)
                log.warning("XQueue server %s is unreachable (%s); replicas are held until it answers",
                            url, message)
        for url in up & self._down:
            self._down.discard(url)
            log.info("XQueue server %s answers again", url)

    async def _read(self, courses: list[Course]) -> dict[Key, Reading]:
        """Queue figures per CourseGrader, or an error (never raises)."""
        out: dict[Key, Reading] = {}
        dial = self._provisioner.dial_url
        if self.config.has_admin:
            by_url: dict[str, list[Course]] = {}
            for c in courses:
                assert c.spec.spec is not None
                by_url.setdefault(dial(c.spec.spec), []).append(c)

            async def one_server(url: str, group: list[Course]) -> None:
                try:
                    queues = await self.xq.all_queue_lengths(url, self._provisioner.admin)
                except XQueueError as e:
                    for c in group:
                        out[c.key] = MetricsError(str(e), e.unreachable)
                    return
                self._last_queues[url] = (self._clock(), queues)
                for c in group:
                    assert c.spec.spec is not None
                    queue = c.spec.spec.queue
                    out[c.key] = queues.get(queue) or MetricsError(f"queue {queue!r} not found")

            await asyncio.gather(*(one_server(u, cs) for u, cs in by_url.items()))
            return out
        sem = asyncio.Semaphore(self.config.metrics_concurrency)

        async def one(c: Course) -> None:
            spec = c.spec.spec
            assert spec is not None
            creds = c.provision.creds
            if creds is None:
                out[c.key] = MetricsError("no grader credentials yet")
                return
            url = dial(spec)
            async with sem:
                down = self._unreachable.get(url)
                if down is not None and down[0] > self._clock():
                    out[c.key] = MetricsError(down[1], unreachable=True)
                    return
                try:
                    out[c.key] = await self.xq.queue_length(url, spec.queue, creds)
                except XQueueError as e:
                    out[c.key] = MetricsError(str(e), e.unreachable)
                    if e.unreachable:
                        self._unreachable[url] = (self._clock() + UNREACHABLE_BACKOFF, str(e))

        await asyncio.gather(*(one(c) for c in courses))
        return out
