"""The operator's moving parts wired together: event intake, the work queue, the scaler and resync.

kopf delivers watch events (handlers.py); what to do comes from the pure modules (spec, resources,
drift, scaling, status) through reconcile.py, provisioning.py, scaler.py and status_writer.py. The
design follows controller-runtime's rather than kopf's timers, for two reasons:

* kopf timers and daemons put a finalizer on every object (kopf/on.py: requires_finalizer=True).
  A finalizer on CourseGraders would block namespace deletion whenever the operator is down
  (anchors.md §6.4 O6), and no clean-up here needs one: children are garbage-collected through
  ownerReferences.
* One scaler loop for all CourseGraders reads every queue on a server with one request per tick
  (GET /api/v1/queues) instead of 1,000 timers each making their own call.

Work per CourseGrader goes through a keyed work queue (workqueue.py): one worker per key at a time,
requests that arrive meanwhile merged (full reconcile > Deployment only > status only, plus the
drift notes that explain a repair), failures retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from . import constants as C
from .config import OperatorConfig
from .kube import ApiError, KubeClient
from .provisioning import Provisioner
from .reconcile import GONE, RETRY, Reconciler, describe
from .resources import grader_username
from .scaler import Scaler
from .state import Course, Key, trim_coursegrader
from .status import queue_conflicts
from .status_writer import PODS_RECHECK, StatusWriter
from .workqueue import Backoff, Failure, WorkQueue, cancel_and_wait
from .xqueue import XQueueClient

log = logging.getLogger(__name__)

PostEvent = Callable[[Mapping[str, Any], str, str, str], None]  # body, type, reason, message

FULL, DEPLOYMENT, STATUS = 4, 2, 1
CREDENTIALS_RETRY = 5.0  # seconds before credentials that are not there yet are looked at again


@dataclass(frozen=True)
class Work:
    flags: int
    drift: tuple[str, ...] = ()


MAX_DRIFT_NOTES = 20  # a key that keeps failing must not collect notes without bound


def merge(a: Work, b: Work) -> Work:
    drift = a.drift + tuple(d for d in b.drift if d not in a.drift)
    return Work(a.flags | b.flags, drift[:MAX_DRIFT_NOTES])


class Controller:
    def __init__(self, config: OperatorConfig, kube: KubeClient, xq: XQueueClient,
                 post_event: PostEvent | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kube = kube
        self.xq = xq
        self.courses: dict[Key, Course] = {}
        self._post_event = post_event
        self._clock = clock
        # Attempts used up: the key waits for the next resync, and periodic work cannot bring it back.
        self._backoff = Backoff(parked=config.resync_interval)
        self.queue: WorkQueue[Key, Work] = WorkQueue(
            self._process, merge, workers=config.workers, backoff=self._backoff, on_failure=self._failed,
            clock=clock)
        self.provisioner = Provisioner(config, kube, xq, self.record, clock)
        self.reconciler = Reconciler(config, kube, xq, self.provisioner, self.record)
        self.scaler = Scaler(config, xq, self.provisioner, self._scaler_notify, self.record, clock)
        self.status = StatusWriter(config, kube, later=lambda key, delay: self.enqueue(key, STATUS, delay),
                                   gone=self._forget, conflict=self._conflict, clock=clock)
        self._claims: dict[Key, tuple[str, str]] = {}
        self._conflicts: dict[Key, list[Key]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.reconciles = 0  # counters for the liveness probe and the benchmark

    @property
    def scale_ticks(self) -> int:
        return self.scaler.ticks

    @property
    def idle(self) -> bool:
        return self.queue.idle

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.queue.start()
        self._tasks.append(asyncio.create_task(self._scale_loop(), name="cg-scaler"))
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="cg-resync"))
        self._tasks.append(asyncio.create_task(self._unready_loop(), name="cg-unready"))

    async def stop(self) -> None:
        await self.queue.stop()
        await cancel_and_wait(self._tasks)
        await self.kube.close()
        await self.xq.close()

    # ---------------------------------------------------------------- events from kopf

    def coursegrader_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self._forget(key, delete_account=True)
            return
        trimmed = trim_coursegrader(body)
        c = self.courses.get(key)
        if c is not None and c.uid != trimmed["metadata"].get("uid"):
            # Same name, new object: nothing learned about the old one applies.
            self._forget(key)
            c = None
        if c is None:
            self.courses[key] = Course.from_body(key, trimmed)
            self.enqueue(key, FULL)
            return
        c.body = trimmed
        c.status.stored(trimmed["status"])
        if c.deleting:
            return  # garbage collection takes the children; do not re-create them
        if event_type is None or c.spec.reconciled_generation != c.generation:
            # A re-list (the watch reconnected, so the API server answers again) or a human's spec
            # change: worth trying now, even while earlier failures back off.
            self.enqueue(key, FULL, expedite=True)

    def owned_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        owner_name = (meta.get("labels") or {}).get(C.LABEL_OWNER)
        if not owner_name:
            return
        c = self.courses.get((meta.get("namespace", ""), owner_name))
        if c is None or c.deleting:
            return
        refs = meta.get("ownerReferences") or []
        if refs and not any(r.get("uid") == c.uid for r in refs):
            return  # left over from an earlier CourseGrader of the same name; GC removes it
        kind = body.get("kind", "")
        name = meta.get("name", "")
        if kind == "Deployment":
            changed = c.observed.see_deployment(None if event_type == "DELETED" else body)
            if changed:
                self.enqueue(c.key, STATUS)
        if event_type == "DELETED":
            self.enqueue(c.key, FULL, drift=f"{kind} {name} was deleted")
            return
        if c.applied.seen_rv.get(kind) == meta.get("resourceVersion", ""):
            return  # the echo of our own write
        found = self.reconciler.drift_of(c, kind, body)
        if found:
            self.enqueue(c.key, FULL, drift=f"{kind} {name} changed at {found}")

    # ---------------------------------------------------------------- work

    def enqueue(self, key: Key, flags: int, delay: float = 0.0, *, drift: str | None = None,
                expedite: bool = False) -> None:
        if key in self.courses:
            self.queue.add(key, Work(flags, (drift,) if drift else ()), delay=delay, expedite=expedite)

    def record(self, c: Course, reason: str, message: str, warning: bool = False) -> None:
        """An event on the CourseGrader, also logged."""
        if warning:
            log.warning("%s/%s: %s: %s", *c.key, reason, message)
        else:
            log.info("%s/%s: %s: %s", *c.key, reason, message)
        if self._post_event is not None:
            self._post_event(c.body, "Warning" if warning else "Normal", reason, message)

    def _failed(self, key: Key, e: BaseException, failure: Failure) -> None:
        if failure.attempt == 0:
            return  # forgotten meanwhile
        if not failure.parked:
            log.warning("%s/%s: %s (attempt %d, retrying in %.1fs)", *key, describe(e), failure.attempt,
                        failure.delay)
        elif failure.attempt == self._backoff.max_attempts + 1:
            log.error("%s/%s: %s; giving up until the next resync", *key, describe(e))
        else:
            log.warning("%s/%s: %s (still failing; next try in %.0fs)", *key, describe(e), failure.delay)

    async def _process(self, key: Key, work: Work) -> None:
        c = self.courses.get(key)
        if c is None:
            return
        if work.flags & FULL:
            await self._reconcile(c, work.drift)
        elif work.flags & DEPLOYMENT:
            await self.reconciler.apply_deployment(c)
            await self.status.write(c)
        else:
            await self.status.write(c)

    async def _reconcile(self, c: Course, drift: tuple[str, ...]) -> None:
        self.reconciles += 1
        try:
            result = await self.reconciler.reconcile(c, drift)
        except (ApiError, aiohttp.ClientError, TimeoutError):
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await self.status.write(c, force=True)
            raise
        if result == GONE:
            self._forget(c.key)
            return
        self._claim(c)
        self.scaler.prime(c)
        await self.status.write(c, force=True)
        if result == RETRY:
            self.enqueue(c.key, FULL, delay=CREDENTIALS_RETRY)

    # ---------------------------------------------------------------- queue claims

    def _claim(self, c: Course) -> None:
        """Track which queue each CourseGrader pulls; two on one queue are reported in both."""
        spec = c.spec.spec
        claim = (self.provisioner.dial_url(spec), spec.queue) if spec is not None else None
        if self._claims.get(c.key) == claim:
            return
        if claim is None:
            self._claims.pop(c.key, None)
        else:
            self._claims[c.key] = claim
        self._update_conflicts()

    def _update_conflicts(self) -> None:
        before = self._conflicts
        self._conflicts = queue_conflicts(self._claims)
        for key in set(before) | set(self._conflicts):
            if before.get(key) == self._conflicts.get(key):
                continue
            self.enqueue(key, STATUS)
            c = self.courses.get(key)
            if c is not None and self._conflicts.get(key):
                self.record(c, "QueueConflict", self._conflict(key) or "", warning=True)

    def _conflict(self, key: Key) -> str | None:
        others = self._conflicts.get(key)
        if not others:
            return None
        url, queue = self._claims[key]
        where = f" on {url}" if url else ""
        names = ", ".join(f"{ns}/{name}" for ns, name in others)
        return (f"queue {queue}{where} is also claimed by CourseGrader {names}: the graders share its "
                "submissions and each scales on the whole backlog")

    # ---------------------------------------------------------------- forgetting

    def _forget(self, key: Key, delete_account: bool = False) -> None:
        c = self.courses.pop(key, None)
        self.queue.forget(key)
        if key in self._claims:
            self._claims.pop(key)
            self._update_conflicts()
        spec = c.spec.spec if c is not None else None
        if delete_account and c is not None and spec is not None and spec.server.provision \
                and self.config.has_admin:
            username = grader_username(c.owner, spec)
            task = asyncio.get_running_loop().create_task(self.provisioner.delete_account(
                self.provisioner.dial_url(spec), username, self._account_in_use))
            self._tasks.append(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    def _account_in_use(self, username: str) -> bool:
        return any(c.spec.spec is not None and c.spec.spec.server.provision
                   and grader_username(c.owner, c.spec.spec) == username for c in self.courses.values())

    # ---------------------------------------------------------------- loops

    def _scaler_notify(self, key: Key, scale: bool) -> None:
        self.enqueue(key, DEPLOYMENT | STATUS if scale else STATUS)

    async def _scale_loop(self) -> None:
        interval = self.config.scale_interval
        while True:
            started = self._clock()
            try:
                await self.scaler.tick(list(self.courses.values()))
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one tick does
                log.exception("scale tick failed")
            await asyncio.sleep(max(0.05, interval - (self._clock() - started)))

    async def _unready_loop(self) -> None:
        """Graders that stay not ready get their status (and its pod reasons) looked at again: the
        Deployment's own status does not change when a pod turns out to be unschedulable."""
        while True:
            await asyncio.sleep(PODS_RECHECK)
            self.enqueue_unready()

    def enqueue_unready(self) -> None:
        now = self._clock()
        for key, c in self.courses.items():
            since = c.status.unready_since
            if since is not None and now - since >= PODS_RECHECK:
                self.enqueue(key, STATUS)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            for key in list(self.courses):
                self.enqueue(key, FULL)
