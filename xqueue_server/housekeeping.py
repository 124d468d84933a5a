"""Periodic background work: poison retirement and queue metrics (every second), retention and
expired sessions (every few minutes). Safe to run on every replica at once."""

from __future__ import annotations

import asyncio
import logging

from .config import Settings
from .db import Database
from .logs import error_fields
from .metrics import Metrics
from .outage import DatabaseUnavailable
from .protocol import FAILURE_NOTICE_BODY
from .storage import Storage

log = logging.getLogger("xqueue.housekeeping")


class Housekeeper:
    def __init__(self, db: Database, settings: Settings, metrics: Metrics, storage: Storage) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.storage = storage
        self._known_queues: set[str] = set()

    async def run_sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable:
                pass  # a database restart must not stop housekeeping; the outage is logged once elsewhere
            except Exception as exc:
                log.warning("sweep failed", extra={"fields": error_fields(exc)})
            await asyncio.sleep(self.settings.sweep_interval_seconds)

    async def run_housekeeping(self) -> None:
        while True:
            try:
                await self.housekeep()
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable:
                pass
            except Exception as exc:
                log.warning("housekeeping failed", extra={"fields": error_fields(exc)})
            await asyncio.sleep(self.settings.housekeeping_interval_seconds)

    async def sweep(self) -> None:
        for submission_id, queue in await self.db.retire_poison(self.settings.max_pulls, FAILURE_NOTICE_BODY):
            self.metrics.poison.labels(queue).inc()
            log.warning("submission retired as poison", extra={"fields": {
                "submission_id": submission_id, "queue": queue, "max_pulls": self.settings.max_pulls}})
        await self.refresh_metrics()

    async def refresh_metrics(self) -> None:
        stats = await self.db.queue_stats()
        seen = set()
        for row in stats:
            name = row["name"]
            seen.add(name)
            self.metrics.queue_depth.labels(name).set(row["queued"])
            self.metrics.queue_in_flight.labels(name).set(row["in_flight"])
            self.metrics.queue_oldest_age.labels(name).set(row["oldest_queued_age_seconds"] or 0.0)
        for gone in self._known_queues - seen:
            for gauge in (self.metrics.queue_depth, self.metrics.queue_in_flight, self.metrics.queue_oldest_age):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        self._known_queues = seen
        counts = await self.db.callback_counts()
        self.metrics.callbacks_pending.set(counts.get("pending", 0))
        self.metrics.callbacks_dead.set(counts.get("dead", 0))
        self.metrics.callback_oldest_age.set(await self.db.oldest_pending_callback_age())

    async def housekeep(self) -> int:
        """Delete finished submissions past retention with their files; returns how many were deleted."""
        await self.db.delete_expired_sessions()
        deleted = 0
        while True:
            batch = await self.db.delete_finished(self.settings.retention_days)
            for _submission_id, files in batch:
                for key in files.values():
                    try:
                        await self.storage.delete(key)
                    except Exception as exc:  # a missing file must not block retention of the rest
                        log.warning("could not delete stored file", extra={"fields": error_fields(exc)})
            deleted += len(batch)
            if len(batch) < 1000:
                break
        if deleted:
            log.info("retention removed finished submissions", extra={"fields": {"count": deleted}})
        return deleted
