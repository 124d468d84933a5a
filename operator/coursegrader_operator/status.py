"""CourseGrader status: conditions, phase and figures (pure).

Conditions follow the Kubernetes convention (type, status, reason, message, lastTransitionTime,
observedGeneration); lastTransitionTime only moves when a condition's status flips, so the status is
stable when nothing changes and the operator writes nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import constants as C


def now_rfc3339(now: datetime.datetime | None = None) -> str:
    now = now or datetime.datetime.now(datetime.UTC)
    return now.astimezone(datetime.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(previous: Iterable[Mapping[str, Any]] | None, wanted: Sequence[Condition],
                     generation: int, timestamp: str) -> list[dict[str, Any]]:
    """Wanted conditions in a fixed order, keeping lastTransitionTime when the status did not flip."""
    before = {c.get("type"): c for c in previous or () if isinstance(c, Mapping)}
    order = {t: i for i, t in enumerate(C.CONDITION_ORDER)}
    out: list[dict[str, Any]] = []
    for cond in sorted(wanted, key=lambda c: order.get(c.type, len(order))):
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        changed = old is None or old.get("status") != status
        since = timestamp if old is None or changed else old.get("lastTransitionTime", timestamp)
        out.append({
            "type": cond.type,
            "status": status,
            "reason": cond.reason,
            "message": cond.message[:1024],
            "observedGeneration": generation,
            "lastTransitionTime": since,
        })
    return out


@dataclass(frozen=True)
class Observed:
    """Everything the operator knows about one CourseGrader at a moment."""

    generation: int
    spec_error: str | None = None
    provisioned: Condition | None = None
    reconcile_error: str | None = None
    desired_replicas: int | None = None
    deployment: Mapping[str, Any] | None = None  # the Deployment's metadata.generation + status
    queued: int | None = None
    in_flight: int | None = None
    oldest_queued_age: float | None = None
    metrics_error: str | None = None
    scaling_enabled: bool = True
    limited: bool = False
    max_replicas: int = 0
    last_scale_time: str | None = None
    grader_username: str | None = None
    credentials_secret: str | None = None
    deployment_name: str | None = None
    pods_problem: str | None = None  # why grader pods are not ready, from their own conditions
    queue_conflict: str | None = None  # other CourseGraders claiming the same queue


def _deployment_ready(obs: Observed) -> tuple[int, int, bool]:
    """(ready replicas, updated replicas, rollout complete) as the Deployment reports them."""
    dep = obs.deployment or {}
    status = dep.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    generation = dep.get("metadata", {}).get("generation")
    seen = status.get("observedGeneration")
    complete = generation is not None and seen is not None and seen >= generation
    return ready, updated, complete


def build_status(obs: Observed, previous: Mapping[str, Any] | None, timestamp: str) -> dict[str, Any]:
    """The full `.status` to write (the caller compares it with what is stored before writing)."""
    prev = previous or {}
    conditions: list[Condition] = []
    status: dict[str, Any] = {"observedGeneration": obs.generation}

    if obs.spec_error:
        conditions.append(Condition(C.COND_SPEC_VALID, False, "InvalidSpec", obs.spec_error))
        conditions.append(Condition(C.COND_READY, False, "InvalidSpec",
                                    "the spec is invalid; fix it to let the operator reconcile"))
        status["phase"] = C.PHASE_INVALID
        # Keep the last known figures visible: the previous Deployment keeps running untouched.
        for key in ("replicas", "readyReplicas", "ready", "queueLength", "inFlight"):
            if key in prev:
                status[key] = prev[key]
        status["conditions"] = merge_conditions(prev.get("conditions"), conditions, obs.generation,
                                                timestamp)
        return status

    conditions.append(Condition(C.COND_SPEC_VALID, True, "Valid", "the spec is valid"))
    if obs.provisioned is not None:
        conditions.append(obs.provisioned)
    if obs.reconcile_error:
        conditions.append(Condition(C.COND_RECONCILED, False, "ApplyFailed", obs.reconcile_error))
    else:
        conditions.append(Condition(C.COND_RECONCILED, True, "Applied",
                                    "all managed objects match the spec"))

    desired = obs.desired_replicas if obs.desired_replicas is not None else 0
    ready, updated, complete = _deployment_ready(obs)
    status["replicas"] = desired
    status["readyReplicas"] = ready
    status["ready"] = f"{ready}/{desired}"

    prev_conditions = {c.get("type"): c for c in prev.get("conditions") or () if isinstance(c, Mapping)}
    prev_active = prev_conditions.get(C.COND_SCALING_ACTIVE) or {}
    # No reading yet (operator restart) over a status that had live figures: keep them until the
    # first tick instead of flipping ScalingActive to WaitingForMetrics and back.
    carried = obs.scaling_enabled and obs.queued is None and not obs.metrics_error \
        and prev_active.get("status") == "True" and "queueLength" in prev
    if carried:
        limited_prev = prev_conditions.get(C.COND_SCALING_LIMITED) or {}
        conditions.append(Condition(C.COND_SCALING_ACTIVE, True, str(prev_active.get("reason", "ValidMetric")),
                                    str(prev_active.get("message", ""))))
        conditions.append(Condition(C.COND_SCALING_LIMITED, limited_prev.get("status") == "True",
                                    str(limited_prev.get("reason", "WithinRange")),
                                    str(limited_prev.get("message", ""))))
        for key in ("queueLength", "inFlight", "oldestQueuedAgeSeconds", "xqueue"):
            if key in prev:
                status[key] = prev[key]
    elif obs.scaling_enabled:
        if obs.metrics_error:
            status["xqueue"] = C.XQUEUE_UNREACHABLE
            conditions.append(Condition(C.COND_SCALING_ACTIVE, False, "MetricsUnavailable",
                                        f"cannot read the queue length: {obs.metrics_error}; "
                                        "holding the current replica count"))
        elif obs.queued is None:
            conditions.append(Condition(C.COND_SCALING_ACTIVE, False, "WaitingForMetrics",
                                        "no queue length read yet"))
        else:
            status["xqueue"] = C.XQUEUE_CONNECTED
            conditions.append(Condition(C.COND_SCALING_ACTIVE, True, "ValidMetric",
                                        "replicas follow the queue length"))
        conditions.append(Condition(
            C.COND_SCALING_LIMITED, obs.limited, "TooManySubmissions" if obs.limited else "WithinRange",
            f"the queue needs more than maxReplicas={obs.max_replicas}" if obs.limited
            else "the recommendation is within minReplicas..maxReplicas"))
    else:
        conditions.append(Condition(C.COND_SCALING_ACTIVE, False, "ScalingDisabled",
                                    "spec.scaling.enabled is false; running minReplicas"))
    if obs.queued is not None:
        status["queueLength"] = obs.queued
        status["inFlight"] = obs.in_flight or 0
        if obs.oldest_queued_age is not None:
            status["oldestQueuedAgeSeconds"] = round(obs.oldest_queued_age)
    if obs.last_scale_time:
        status["lastScaleTime"] = obs.last_scale_time
    for key, value in (("graderUsername", obs.grader_username),
                       ("credentialsSecret", obs.credentials_secret),
                       ("deployment", obs.deployment_name)):
        if value:
            status[key] = value

    provisioned_ok = obs.provisioned is None or obs.provisioned.status
    if obs.reconcile_error:
        ready_cond = Condition(C.COND_READY, False, "ReconcileFailed", obs.reconcile_error)
        phase = C.PHASE_DEGRADED
    elif obs.deployment is None:
        ready_cond = Condition(C.COND_READY, False, "DeploymentMissing",
                               "the grader Deployment is not there yet")
        phase = C.PHASE_PROGRESSING
    elif desired == 0:
        ready_cond = Condition(C.COND_READY, True, "ScaledToZero",
                               "no work queued; graders start when submissions arrive")
        phase = C.PHASE_IDLE
    elif ready >= desired and updated >= desired and complete:
        ready_cond = Condition(C.COND_READY, True, "GradersReady", f"{ready}/{desired} graders ready")
        phase = C.PHASE_READY
    else:
        message = f"{ready}/{desired} graders ready"
        if obs.pods_problem:
            message += f": {obs.pods_problem}"
        ready_cond = Condition(C.COND_READY, False, "GradersNotReady", message)
        phase = C.PHASE_PROGRESSING
    if not provisioned_ok and phase in (C.PHASE_PROGRESSING, C.PHASE_READY, C.PHASE_IDLE):
        phase = C.PHASE_PROVISIONING
        if ready_cond.status:
            ready_cond = Condition(C.COND_READY, False, "NotProvisioned",
                                   obs.provisioned.message if obs.provisioned else "")
    conditions.append(ready_cond)
    if obs.queue_conflict:
        conditions.append(Condition(C.COND_QUEUE_CONFLICT, True, "QueueClaimedTwice", obs.queue_conflict))
    status["phase"] = phase
    status["conditions"] = merge_conditions(prev.get("conditions"), conditions, obs.generation, timestamp)
    return status


def status_differs(new: Mapping[str, Any], old: Mapping[str, Any] | None,
                   ignore: Iterable[str] = ()) -> bool:
    """Whether writing `new` would change anything (ignoring keys in `ignore`)."""
    old = old or {}
    skip = set(ignore) | {"kopf"}
    keys = (set(new) | set(old)) - skip
    return any(new.get(k) != old.get(k) for k in keys)


def status_patch(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """A merge patch that turns `old` into `new`: keys that disappeared are set to null."""
    old = old or {}
    patch: dict[str, Any] = dict(new)
    for key in old:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch


def pods_problem(pods: Iterable[Mapping[str, Any]]) -> str | None:
    """Why grader pods are not ready, in their own words (PodScheduled=False, a waiting container),
    or None when no pod says. Identical reasons are counted, not repeated."""
    found: dict[str, int] = {}
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        st = pod.get("status") or {}
        reason = None
        for cond in st.get("conditions") or ():
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reason = f"{cond.get('reason') or 'Unschedulable'}: {cond.get('message') or 'not scheduled'}"
                break
        if reason is None:
            for cs in [*(st.get("initContainerStatuses") or ()), *(st.get("containerStatuses") or ())]:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") and waiting["reason"] not in ("PodInitializing", "ContainerCreating"):
                    reason = f"container {cs.get('name')} {waiting['reason']}"
                    if waiting.get("message"):
                        reason += f": {waiting['message']}"
                    break
        if reason is not None:
            found[reason[:300]] = found.get(reason[:300], 0) + 1
    if not found:
        return None
    return "; ".join(f"{n} pod(s) {reason}" for reason, n in sorted(found.items(), key=lambda i: -i[1]))[:600]


def queue_conflicts(claims: Mapping[Any, tuple[str, str]]) -> dict[Any, list[Any]]:
    """CourseGraders that claim the same queue on the same server: key -> the other claimants."""
    by_queue: dict[tuple[str, str], list[Any]] = {}
    for key, claim in claims.items():
        by_queue.setdefault(claim, []).append(key)
    out: dict[Any, list[Any]] = {}
    for keys in by_queue.values():
        if len(keys) > 1:
            for key in keys:
                out[key] = sorted(k for k in keys if k != key)
    return out
