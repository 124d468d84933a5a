"""Reconcile one CourseGrader: parse its spec, apply the desired objects, repair drift, scale.

Everything desired comes from the pure modules (spec, resources, scaling); this module does the
reads and writes and keeps SpecState and AppliedState (their only writer). A scale proposed by the
scaler is recorded here (replica count, lastScaleTime, event) only after the patch succeeded.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from . import constants as C
from .config import OperatorConfig
from .drift import comparable, find_drift
from .kube import ApiError, KubeClient
from .provisioning import Provisioner, secret_digest
from .resources import ObjectNames, build_deployment, build_objects, child_name, selector_labels
from .scaling import DELETION_COST_ANNOTATION, deletion_costs, target_replicas
from .spec import CourseGraderSpec, SpecError, parse_spec, validate_name
from .state import Course
from .status import now_rfc3339
from .xqueue import XQueueClient, XQueueError

log = logging.getLogger(__name__)

Record = Callable[..., None]  # (course, reason, message, warning=False)
OK, RETRY, GONE = "ok", "retry", "gone"


def _parse_time(text: str | None) -> datetime.datetime:
    if not text:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def describe(e: BaseException) -> str:
    """A one-line, secret-free description of an error for status, events and logs."""
    if isinstance(e, ApiError):
        return f"Kubernetes API {e.status} {e.reason}: {e.message}"[:500]
    return f"{type(e).__name__}: {e}"[:500]


class Reconciler:
    def __init__(self, config: OperatorConfig, kube: KubeClient, xq: XQueueClient,
                 provisioner: Provisioner, record: Record) -> None:
        self.config = config
        self.kube = kube
        self.xq = xq
        self.provisioner = provisioner
        self._record = record

    # ---------------------------------------------------------------- spec

    def parse(self, c: Course) -> None:
        s = c.spec
        if s.parsed_generation == c.generation and (s.spec is not None or s.error is not None):
            return
        s.parsed_generation = c.generation
        problems = validate_name(c.key[1])
        try:
            spec = parse_spec(c.body.get("spec"), self.config.spec_defaults)
        except SpecError as e:
            problems += e.problems
            spec = None
        if problems:
            s.spec, s.error = None, "; ".join(problems)
        else:
            s.spec, s.error = spec, None

    # ---------------------------------------------------------------- full reconcile

    async def reconcile(self, c: Course, drift: Sequence[str]) -> str:
        """Make everything match the spec; returns OK, RETRY (look again soon) or GONE."""
        self.parse(c)
        generation = c.generation
        spec = c.spec.spec
        if spec is None:
            if c.spec.warned_generation != generation:
                c.spec.warned_generation = generation
                self._record(c, "InvalidSpec", c.spec.error or "invalid spec", warning=True)
            c.spec.reconciled_generation = generation
            return OK
        if any("deleted" in d for d in drift):
            # A deleted child may just be garbage collection after the CourseGrader itself went away
            # (the two watch streams are not ordered): confirm before re-creating anything.
            current = await self.kube.get(C.API_VERSION, C.KIND, *c.key)
            if current is None or current["metadata"].get("uid") != c.uid \
                    or current["metadata"].get("deletionTimestamp"):
                return GONE
        try:
            retry = await self._apply_all(c, spec, drift)
            c.applied.error = None
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            c.applied.error = describe(e)
            raise
        c.spec.reconciled_generation = generation
        return RETRY if retry else OK

    async def _read(self, c: Course, kind: str) -> dict[str, Any] | None:
        m = C.MANAGED_BY_KIND[kind]
        return await self.kube.get(m.api_version, kind, c.key[0], child_name(c.key[1], kind))

    async def _apply_all(self, c: Course, spec: CourseGraderSpec, drift: Sequence[str]) -> bool:
        """Make every managed object match the spec; returns whether credentials need another look.

        Two modes, to keep the API server's work proportional to what changed:
        * apply - the spec changed (or the object is new): apply everything with server-side apply
          in two round trips (ServiceAccount, ConfigMap, NetworkPolicy and the credentials check
          together, then the Deployment, whose pods need the first two). After an operator restart
          the objects are also read in the first round trip, so the Applied event can say what
          really changed; a CourseGrader never reconciled before needs no reads (its children are
          new: their creationTimestamp says so).
        * verify - resync, drift or operator restart with an unchanged spec: read the objects
          (GETs are cheap) and apply only those that are missing or differ. A restart of the
          operator over 1,000 healthy CourseGraders then writes nothing.
        """
        a = c.applied
        owner = c.owner
        stored = (c.body.get("status") or {}).get("observedGeneration")
        verify = c.generation in (c.spec.reconciled_generation, stored)
        never_reconciled = stored is None and not a.seen_rv
        read_kinds = [k for k in C.VERIFIED_KINDS
                      if verify or (k not in a.seen_rv and not never_reconciled)]
        started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2)
        retry, *reads = await asyncio.gather(self.provisioner.check(c, spec),
                                             *(self._read(c, kind) for kind in read_kinds))
        observed: dict[str, dict[str, Any] | None] = dict(zip(read_kinds, reads, strict=True))
        before = {k: (o or {}).get("metadata", {}).get("resourceVersion") for k, o in observed.items()}
        for kind, rv in a.seen_rv.items():
            before.setdefault(kind, rv)
        running = None
        existing = observed.get("Deployment")
        if a.replicas is None and existing is not None:
            running = existing.get("spec", {}).get("replicas")
        replicas = self.target(c, spec, running)
        objects = build_objects(owner, spec, replicas, self.config)  # each object built once

        def needed(obj: dict[str, Any]) -> bool:
            if not verify:
                return True
            current = observed.get(obj["kind"])
            if current is None or find_drift(comparable(obj), current) is not None:
                return True
            a.seen_rv[obj["kind"]] = current["metadata"].get("resourceVersion", "")
            return False

        deployment = objects["Deployment"]
        first = [o for kind, o in objects.items() if kind != "Deployment" and needed(o)]
        results = list(await asyncio.gather(*(self.kube.apply(o) for o in first)))
        if needed(deployment):
            await self.mark_pod_deletion_costs(c, a.replicas, replicas)
            applied = await self.kube.apply(deployment)
            results.append(applied)
            c.observed.see_deployment(applied)
        elif observed.get("Deployment") is not None:
            c.observed.see_deployment(observed["Deployment"])
        self._applied_replicas(c, spec, replicas)
        a.desired = objects
        changes: list[str] = []
        for obj in results:
            kind, meta = obj.get("kind", ""), obj.get("metadata", {})
            rv = meta.get("resourceVersion", "")
            a.seen_rv[kind] = rv
            if before.get(kind) is None:
                if kind in observed or _parse_time(meta.get("creationTimestamp")) >= started:
                    changes.append(f"created {kind} {meta.get('name')}")
            elif before[kind] != rv:
                changes.append(f"updated {kind} {meta.get('name')}")
        np_exists = before.get("NetworkPolicy") is not None
        if not spec.network_policy.enabled and np_exists:
            name = ObjectNames.for_owner(owner.name).network_policy
            a.seen_rv.pop("NetworkPolicy", None)
            if await self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", owner.namespace, name):
                changes.append(f"deleted NetworkPolicy {name} (spec.networkPolicy.enabled is false)")
        if drift and changes:
            self._record(c, "DriftRepaired", "; ".join(drift)[:400] + " -> " + "; ".join(changes)[:400],
                         warning=True)
        elif changes:
            self._record(c, "Applied", "; ".join(changes)[:800])
        return retry

    # ---------------------------------------------------------------- scaling

    def target(self, c: Course, spec: CourseGraderSpec, running: int | None = None) -> int:
        decision = c.scale.decision
        current = c.applied.replicas if c.applied.replicas is not None else running
        return target_replicas(spec.scaling, decision.replicas if decision else None, current)

    def _applied_replicas(self, c: Course, spec: CourseGraderSpec, replicas: int) -> None:
        """Record an applied replica count; a change the scaler proposed is a scale (time, event)."""
        a = c.applied
        previous, a.replicas = a.replicas, replicas
        decision = c.scale.decision
        if previous is None or previous == replicas or decision is None or not spec.scaling.enabled \
                or decision.replicas != replicas:
            return
        a.last_scale_time = now_rfc3339()
        self._record(c, "ScaledUp" if replicas > previous else "ScaledDown",
                     f"grader Deployment {previous} -> {replicas} replicas: {decision.reason}")

    async def apply_deployment(self, c: Course) -> None:
        spec = c.spec.spec
        if spec is None or c.applied.replicas is None:
            return
        replicas = self.target(c, spec)
        if replicas == c.applied.replicas and c.applied.desired.get("Deployment") is not None:
            return  # nothing to change (the proposal went back meanwhile)
        await self.mark_pod_deletion_costs(c, c.applied.replicas, replicas)
        deployment = build_deployment(c.owner, spec, replicas)
        applied = await self.kube.apply(deployment)
        c.applied.seen_rv["Deployment"] = applied.get("metadata", {}).get("resourceVersion", "")
        c.applied.desired["Deployment"] = deployment
        c.observed.see_deployment(applied)
        self._applied_replicas(c, spec, replicas)

    async def mark_pod_deletion_costs(self, c: Course, current: int | None, replicas: int) -> None:
        """Before a scale-down, set pod-deletion-cost on the grader pods to their in-flight count.

        The ReplicaSet controller then removes idle pods first. Only on a scale-down, only if the
        server reports `in_flight_by_grader` (older servers do not: nothing is annotated), and only
        pods whose annotation changes are patched. Grader addresses are compared with status.podIP as
        strings; pods are never dialed. Best effort: a failure here never holds up the scale-down.
        """
        spec = c.spec.spec
        if spec is None or current is None or replicas >= current:
            return
        load = c.scale.load
        by_grader = load.in_flight_by_grader if load is not None else None
        if by_grader is None:
            # The all-queues listing (admin mode) carries no per-grader figures: one extra request
            # for this queue, made only on a scale-down.
            auth = self.provisioner.admin if self.config.has_admin else c.provision.creds
            if not auth:
                return
            try:
                by_grader = (await self.xq.queue_length(self.provisioner.dial_url(spec), spec.queue,
                                                        auth)).in_flight_by_grader
            except XQueueError as e:
                log.info("%s/%s: no per-grader in-flight figures (%s); pods not annotated", *c.key, e)
                return
            if by_grader is None:
                return  # the server does not report them
        ns = c.key[0]
        try:
            pods = await self.kube.list("v1", "Pod", ns, selector_labels(c.owner))
            changes = deletion_costs(
                [(p["metadata"]["name"], (p.get("status") or {}).get("podIP"),
                  (p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION))
                 for p in pods if not p["metadata"].get("deletionTimestamp")],
                by_grader)
            results = await asyncio.gather(
                *(self.kube.merge_patch("v1", "Pod", ns, name,
                                        {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}})
                  for name, cost in changes.items()),
                return_exceptions=True)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("%s/%s: could not set pod-deletion-cost: %s", *c.key, describe(e))
            return
        failed = [r for r in results if isinstance(r, BaseException)
                  and not (isinstance(r, ApiError) and r.not_found)]
        if failed:
            log.warning("%s/%s: could not set pod-deletion-cost on %d pod(s): %s", *c.key, len(failed),
                        describe(failed[0]))
        if changes:
            log.info("%s/%s: pod-deletion-cost set on %d pod(s) before scaling %d -> %d", *c.key,
                     len(changes) - len(failed), current, replicas)

    # ---------------------------------------------------------------- drift

    def drift_of(self, c: Course, kind: str, body: Mapping[str, Any]) -> str | None:
        """Where `body` departs from what the operator applied, or None."""
        spec = c.spec.spec
        if spec is None or c.spec.reconciled_generation != c.generation:
            return None  # a reconcile for the new spec is due anyway; do not report a spec change as drift
        name = body.get("metadata", {}).get("name")
        if kind == "Secret":
            # A change to the provisioned Secret that is not our own write: the account must follow
            # it (a new password is pushed to the server; a broken Secret is regenerated). A Secret
            # re-listed after a watch restart, with the same data, is no change.
            if spec.server.provision and name == child_name(c.key[1], "Secret") \
                    and secret_digest(body) != c.provision.secret_digest:
                return ".data"
            return None
        desired = c.applied.desired.get(kind)
        if desired is None:
            # A kind the spec no longer wants (NetworkPolicy disabled): its presence is the drift.
            return "." if kind == "NetworkPolicy" and c.applied.desired else None
        if name != desired["metadata"]["name"]:
            return None
        # Replicas are compared with what the operator last applied (desired was built with them),
        # not with a newer proposal the scaler has not applied yet: that is a pending scale.
        return find_drift(comparable(desired), body)
