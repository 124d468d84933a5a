"""Kubernetes Events for what the operator does (`kubectl describe coursegrader` tells the story).

kopf's own poster only works inside its per-object tasks (its queue lives in a context variable set
there), while most actions here happen in the scaler and the work queue. So events are posted by a
small background task of our own: non-blocking for the caller, bounded in memory, and identical
repeats within a minute are dropped instead of flooding the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from . import constants as C
from .kube import ApiError, KubeClient
from .status import now_rfc3339

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000
REPEAT_WINDOW = 60.0


def build_event(obj: Mapping[str, Any], type_: str, reason: str, message: str, timestamp: str,
                instance: str) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'coursegrader')}.",
                     "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": obj.get("apiVersion", C.API_VERSION),
                           "kind": obj.get("kind", C.KIND),
                           "name": meta.get("name"), "namespace": meta.get("namespace"),
                           "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": C.OPERATOR_NAME},
        "reportingComponent": C.OPERATOR_NAME, "reportingInstance": instance,
        "firstTimestamp": timestamp, "lastTimestamp": timestamp, "count": 1,
    }


class EventPoster:
    def __init__(self, kube: KubeClient, *, warnings_only: bool = False) -> None:
        self._kube = kube
        self._warnings_only = warnings_only
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._recent: dict[tuple[str, str, str], float] = {}
        self._task: asyncio.Task[None] | None = None
        self._instance = socket.gethostname()
        self.posted = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cg-event-poster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        if self._warnings_only and type_ != "Warning":
            return
        uid = str(obj.get("metadata", {}).get("uid", ""))
        key = (uid, reason, message)
        now = time.monotonic()
        if now - self._recent.get(key, -REPEAT_WINDOW) < REPEAT_WINDOW:
            return
        if len(self._recent) > 4 * QUEUE_LIMIT:
            self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT_WINDOW}
        self._recent[key] = now
        try:
            self._queue.put_nowait(build_event(obj, type_, reason, message, now_rfc3339(), self._instance))
        except asyncio.QueueFull:
            log.warning("event queue full; dropped %s event %s", type_, reason)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._kube.create(event)
                self.posted += 1
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                # Events are best effort: a namespace being deleted refuses them, and that is fine.
                log.debug("could not post event %s: %s", event["reason"], e)
