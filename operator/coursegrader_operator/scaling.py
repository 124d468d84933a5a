"""Replica decisions from queue length (pure: numbers in, numbers out).

The rule mirrors the HPA's behaviour fields, with the anti-flapping latch PrairieLearn's grader
autoscaler uses:

* recommendation = ceil((queued + in_flight) / (slots * targetPerSlot)), clamped to [min, max];
* scale up at once (or, with a scale-up window, to the *lowest* recommendation in that window, so a
  single spike does not trigger a surge);
* scale down only to the *highest* recommendation seen during the scale-down window, so under a
  sawtooth load the replica count stays at the peak instead of following every dip.

In-flight work counts towards the recommendation, so a busy grader is never judged idle just because
the queue itself is empty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .spec import ScalingPolicy


@dataclass(frozen=True)
class QueueLoad:
    """What the XQueue server reports for one queue (GET /api/v1/queues/{name}/length)."""

    queued: int
    in_flight: int
    oldest_queued_age: float | None = None
    # Leased submissions per grader client address (the pod IP in a cluster), or None when the server
    # does not report it (older servers, upstream, and the all-queues listing).
    in_flight_by_grader: Mapping[str, int] | None = field(default=None, compare=False, hash=False)

    @property
    def outstanding(self) -> int:
        return max(0, self.queued) + max(0, self.in_flight)


@dataclass(frozen=True)
class Decision:
    replicas: int
    recommendation: int
    limited: bool  # the unclamped recommendation was above maxReplicas
    reason: str


@dataclass
class ScaleHistory:
    """Recommendations with their timestamps, newest last (seconds on a monotonic clock)."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, now: float, recommendation: int, keep: float) -> None:
        self.samples.append((now, recommendation))
        cutoff = now - keep
        # Keep one sample at or before the cutoff: it still describes the window's left edge.
        while len(self.samples) > 1 and self.samples[1][0] <= cutoff:
            self.samples.pop(0)

    def in_window(self, now: float, window: float) -> list[int]:
        return [rec for t, rec in self.samples if t >= now - window]


def raw_recommendation(load: QueueLoad, slots: int, target_per_slot: float) -> int:
    """Pods needed so that each slot has at most `target_per_slot` outstanding submissions."""
    per_pod = max(slots * target_per_slot, 1e-9)
    return math.ceil(load.outstanding / per_pod - 1e-9)


def clamp(replicas: int, policy: ScalingPolicy) -> int:
    low = policy.min_replicas if policy.allow_scale_to_zero else max(1, policy.min_replicas)
    return max(low, min(policy.max_replicas, replicas))


def decide(history: ScaleHistory, now: float, load: QueueLoad, current: int, slots: int,
           policy: ScalingPolicy) -> Decision:
    """The replica count to run now; records this tick's recommendation into `history`."""
    raw = raw_recommendation(load, slots, policy.target_per_slot)
    rec = clamp(raw, policy)
    history.add(now, rec, keep=max(policy.scale_up_window, policy.scale_down_window))
    limited = raw > policy.max_replicas
    current_clamped = clamp(current, policy)
    if rec > current_clamped:
        # Scale-up stabilisation: the least any recent tick asked for (all of them asked for more).
        target = min(history.in_window(now, policy.scale_up_window)) if policy.scale_up_window else rec
        target = max(current_clamped, target)
        return Decision(target, rec, limited, f"{load.outstanding} outstanding submission(s)")
    if rec < current_clamped:
        # Scale-down stabilisation: never below the highest recent recommendation.
        target = max(history.in_window(now, policy.scale_down_window))
        target = min(current_clamped, max(target, rec))
        if target < current_clamped:
            return Decision(target, rec, limited, f"{load.outstanding} outstanding submission(s) "
                            f"for {policy.scale_down_window:g}s")
        return Decision(current_clamped, rec, limited, "scale-down window not yet elapsed")
    reason = "within limits" if current_clamped == current else "clamped to min/max"
    return Decision(current_clamped, rec, limited, reason)


def hold(current: int, policy: ScalingPolicy) -> int:
    """Replicas when no queue figures are available: keep what runs, within the spec's bounds."""
    return clamp(current, policy)


def initial_replicas(policy: ScalingPolicy, existing: int | None) -> int:
    """Replicas to apply when the operator has no decision yet (new object or operator restart).

    After a restart the running count is kept (clamped): restarting the operator must not make the
    graders flap back to minReplicas and up again.
    """
    if not policy.enabled:
        return clamp(policy.min_replicas, policy)
    return clamp(existing if existing is not None else policy.min_replicas, policy)


def target_replicas(policy: ScalingPolicy, proposed: int | None, current: int | None) -> int:
    """The replica count to apply: the whole rule in one place.

    `proposed` is the scaler's latest decision (None before the first queue reading) and `current`
    what the operator last applied, or, before its first apply, what the Deployment runs.
    """
    if not policy.enabled:
        return clamp(policy.min_replicas, policy)
    if proposed is not None:
        return clamp(proposed, policy)
    return initial_replicas(policy, current)


DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"


def deletion_costs(pods: Iterable[tuple[str, str | None, str | None]],
                   in_flight_by_grader: Mapping[str, int]) -> dict[str, str]:
    """Pod-deletion-cost annotations that must change before a scale-down.

    `pods` are (name, status.podIP, current annotation value or None); the cost of a pod is the number
    of submissions leased to its address (0 for idle pods and pods without an IP), so the ReplicaSet
    controller removes idle pods first. Only pods whose annotation differs are returned, so a
    scale-down patches as few pods as possible. Addresses are only compared as strings, never dialed.
    """
    out: dict[str, str] = {}
    for name, ip, current in pods:
        count = in_flight_by_grader.get(ip, 0) if ip else 0
        try:
            cost = str(max(0, min(int(count), 2**31 - 1)))  # the annotation is an int32
        except (TypeError, ValueError):
            cost = "0"
        if current != cost:
            out[name] = cost
    return out
