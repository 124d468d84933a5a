"""Status writes: what is known about a CourseGrader -> `.status`, written only when it changed.

Queue figures change every tick under load, so a write that only changes them is rate-limited per
object (XQOP_STATUS_MIN_INTERVAL) with a timer that makes sure the latest figures land. When grader
pods stay not ready the pods are read (at most every PODS_RECHECK seconds) so Ready says why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import aiohttp

from .config import OperatorConfig
from .kube import ApiError, KubeClient
from .resources import ObjectNames, credentials_secret_name, selector_labels
from .state import Course, Key
from .status import Observed, build_status, now_rfc3339, pods_problem, status_differs, status_patch

log = logging.getLogger(__name__)

FIGURES = ("queueLength", "inFlight", "oldestQueuedAgeSeconds")
PODS_RECHECK = 10.0  # seconds graders may take to get ready before their pods are read (then: between reads)


class StatusWriter:
    def __init__(self, config: OperatorConfig, kube: KubeClient, *,
                 later: Callable[[Key, float], None], gone: Callable[[Key], None],
                 conflict: Callable[[Key], str | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kube = kube
        self._later = later  # a status-only pass for the key after a delay
        self._gone = gone
        self._conflict = conflict
        self._clock = clock

    def observed(self, c: Course) -> Observed:
        spec = c.spec.spec
        names = ObjectNames.for_owner(c.key[1])
        load = c.scale.load
        decision = c.scale.decision
        return Observed(
            generation=c.generation,
            spec_error=c.spec.error,
            provisioned=c.provision.condition,
            reconcile_error=c.applied.error,
            desired_replicas=c.applied.replicas,
            deployment=c.observed.deployment,
            queued=load.queued if load else None,
            in_flight=load.in_flight if load else None,
            oldest_queued_age=load.oldest_queued_age if load else None,
            metrics_error=c.scale.metrics_error,
            scaling_enabled=spec.scaling.enabled if spec else True,
            limited=decision.limited if decision else False,
            max_replicas=spec.scaling.max_replicas if spec else 0,
            last_scale_time=c.applied.last_scale_time,
            grader_username=(c.provision.creds.username if c.provision.creds else None),
            credentials_secret=credentials_secret_name(c.owner, spec) if spec else None,
            deployment_name=names.deployment if spec else None,
            pods_problem=c.status.pods_problem,
            queue_conflict=self._conflict(c.key),
        )

    async def _check_pods(self, c: Course) -> None:
        """Graders not ready for PODS_RECHECK seconds: why, from the pods.

        A normal rollout gets ready within that time and costs no pod read at all; the controller
        asks again every PODS_RECHECK seconds while graders stay not ready (`unready_since`)."""
        st = c.status
        dep = c.observed.deployment or {}
        desired = c.applied.replicas or 0
        ready = int((dep.get("status") or {}).get("readyReplicas") or 0)
        if c.spec.spec is None or not dep or desired == 0 or ready >= desired:
            st.pods_problem, st.unready_since = None, None
            return
        now = self._clock()
        if st.unready_since is None:
            st.unready_since = now
        elif now - st.unready_since >= PODS_RECHECK and now - st.pods_checked_at >= PODS_RECHECK:
            st.pods_checked_at = now
            try:
                pods = await self.kube.list("v1", "Pod", c.key[0], selector_labels(c.owner))
            except (ApiError, aiohttp.ClientError, TimeoutError) as e:
                log.debug("%s/%s: could not list grader pods: %s", *c.key, e)
            else:
                st.pods_problem = pods_problem(pods)

    async def write(self, c: Course, force: bool = False) -> None:
        st = c.status
        await self._check_pods(c)
        new = build_status(self.observed(c), st.last, now_rfc3339())
        if not status_differs(new, st.last):
            return
        figures_only = not status_differs(new, st.last, ignore=FIGURES)
        wait = self.config.status_min_interval - (self._clock() - st.written_at)
        if figures_only and not force and wait > 0:
            # Queue figures change every tick under load; write them at a bounded rate, but make sure
            # the latest figures land eventually.
            now = self._clock()
            if st.timer_due <= now:
                st.timer_due = now + wait
                self._later(c.key, wait)
            return
        if log.isEnabledFor(logging.DEBUG):
            changed = sorted(k for k in set(new) | set(st.last or {}) if new.get(k) != (st.last or {}).get(k))
            log.debug("%s/%s: writing status (%s)", *c.key, ", ".join(changed))
        try:
            result = await self.kube.patch_status(c.key[0], c.key[1], status_patch(new, st.last))
        except ApiError as e:
            if e.not_found:
                self._gone(c.key)  # deleted while we were not looking (missed DELETED event)
                return
            raise
        st.stored(result.get("status") or new)
        st.written_at = self._clock()
