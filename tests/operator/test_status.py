"""Status conditions, phases and the status patch."""

from __future__ import annotations

from typing import Any

from coursegrader_operator import constants as C
from coursegrader_operator.status import (
    Condition,
    Observed,
    build_status,
    merge_conditions,
    now_rfc3339,
    pods_problem,
    queue_conflicts,
    status_differs,
    status_patch,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
PROVISIONED = Condition(C.COND_PROVISIONED, True, "CredentialsFound", "ok")


def deployment(ready: int, generation: int = 1, observed: int = 1,
               updated: int | None = None) -> dict[str, Any]:
    return {"metadata": {"generation": generation},
            "status": {"readyReplicas": ready, "updatedReplicas": ready if updated is None else updated,
                       "observedGeneration": observed}}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_ready_when_all_desired_graders_are_ready() -> None:
    obs = Observed(generation=3, provisioned=PROVISIONED, desired_replicas=2, deployment=deployment(2),
                   queued=5, in_flight=1)
    status = build_status(obs, None, T0)
    assert status["phase"] == C.PHASE_READY
    assert status["observedGeneration"] == 3
    assert status["ready"] == "2/2" and status["queueLength"] == 5 and status["inFlight"] == 1
    ready = conditions(status)[C.COND_READY]
    assert ready["status"] == "True" and ready["reason"] == "GradersReady"
    assert ready["lastTransitionTime"] == T0 and ready["observedGeneration"] == 3


def test_rollout_in_progress_is_not_ready() -> None:
    obs = Observed(generation=1, provisioned=PROVISIONED, desired_replicas=3, deployment=deployment(3, 2, 1))
    status = build_status(obs, None, T0)
    assert status["phase"] == C.PHASE_PROGRESSING
    assert conditions(status)[C.COND_READY]["status"] == "False"


def test_transition_time_moves_only_when_status_flips() -> None:
    obs = Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2, deployment=deployment(1))
    first = build_status(obs, None, T0)
    again = build_status(obs, first, T1)
    assert conditions(again)[C.COND_READY]["lastTransitionTime"] == T0
    assert not status_differs(again, first)
    ready = Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2, deployment=deployment(2))
    flipped = build_status(ready, first, T1)
    assert conditions(flipped)[C.COND_READY]["lastTransitionTime"] == T1
    assert conditions(flipped)[C.COND_SPEC_VALID]["lastTransitionTime"] == T0


def test_invalid_spec_keeps_last_figures_and_says_why() -> None:
    before = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2,
                                   deployment=deployment(2), queued=4, in_flight=0), None, T0)
    status = build_status(Observed(generation=2, spec_error="spec.scaling.minReplicas must not exceed"),
                          before, T1)
    assert status["phase"] == C.PHASE_INVALID
    cond = conditions(status)
    assert cond[C.COND_SPEC_VALID]["status"] == "False"
    assert "minReplicas" in cond[C.COND_SPEC_VALID]["message"]
    assert cond[C.COND_READY]["reason"] == "InvalidSpec"
    assert status["ready"] == "2/2" and status["observedGeneration"] == 2


def test_scaled_to_zero_is_idle_and_ready() -> None:
    status = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=0,
                                   deployment=deployment(0), queued=0, in_flight=0), None, T0)
    assert status["phase"] == C.PHASE_IDLE
    assert conditions(status)[C.COND_READY]["reason"] == "ScaledToZero"


def test_failed_provisioning_and_apply_errors_show_in_phase() -> None:
    failed = Condition(C.COND_PROVISIONED, False, "ProvisioningFailed", "HTTP 503")
    status = build_status(Observed(generation=1, provisioned=failed, desired_replicas=1,
                                   deployment=deployment(1)), None, T0)
    assert status["phase"] == C.PHASE_PROVISIONING
    assert conditions(status)[C.COND_READY]["status"] == "False"
    status = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=1,
                                   reconcile_error="403 Forbidden"), None, T0)
    assert status["phase"] == C.PHASE_DEGRADED
    assert conditions(status)[C.COND_RECONCILED]["status"] == "False"


def test_metrics_outage_is_a_condition_not_a_crash() -> None:
    status = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2,
                                   deployment=deployment(2), metrics_error="connection refused"), None, T0)
    cond = conditions(status)[C.COND_SCALING_ACTIVE]
    assert cond["status"] == "False" and cond["reason"] == "MetricsUnavailable"
    assert status["phase"] == C.PHASE_READY


def test_limited_scaling_is_reported() -> None:
    status = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=10, limited=True,
                                   max_replicas=10, deployment=deployment(10), queued=500, in_flight=40),
                          None, T0)
    assert conditions(status)[C.COND_SCALING_LIMITED]["status"] == "True"


def test_conditions_have_a_stable_order_and_all_fields() -> None:
    wanted = [Condition("Zeta", True, "r"), Condition(C.COND_READY, False, "r")]
    merged = merge_conditions(None, wanted, 4, T0)
    assert [c["type"] for c in merged] == [C.COND_READY, "Zeta"]
    assert set(merged[0]) == {"type", "status", "reason", "message", "observedGeneration",
                              "lastTransitionTime"}


def test_queue_figures_alone_can_be_told_apart() -> None:
    a = {"phase": "Ready", "queueLength": 1, "inFlight": 0}
    b = {"phase": "Ready", "queueLength": 9, "inFlight": 2}
    assert status_differs(a, b)
    assert not status_differs(a, b, ignore=("queueLength", "inFlight"))


def test_status_patch_nulls_removed_keys_and_keeps_kopf() -> None:
    assert status_patch({"phase": "Ready"}, {"phase": "Invalid", "queueLength": 3, "kopf": {}}) == \
        {"phase": "Ready", "queueLength": None}


def test_timestamps_are_rfc3339_utc() -> None:
    text = now_rfc3339()
    assert text.endswith("Z") and len(text) == 20


def test_a_restart_before_the_first_reading_keeps_the_live_metrics() -> None:
    """A restart flipped ScalingActive to WaitingForMetrics and back and lost lastScaleTime (issue 12)."""
    live = Observed(generation=2, provisioned=PROVISIONED, desired_replicas=3, deployment=deployment(3),
                    queued=4, in_flight=2, limited=True, max_replicas=3, last_scale_time=T0)
    before = build_status(live, None, T0)
    restarted = Observed(generation=2, provisioned=PROVISIONED, desired_replicas=3, deployment=deployment(3),
                         max_replicas=3, last_scale_time=T0)
    after = build_status(restarted, before, T1)
    assert not status_differs(after, before)
    assert after == before
    # A brand-new object still says it is waiting, and an outage still shows.
    fresh = build_status(restarted, None, T1)
    assert conditions(fresh)[C.COND_SCALING_ACTIVE]["reason"] == "WaitingForMetrics"
    down = Observed(generation=2, provisioned=PROVISIONED, desired_replicas=3, deployment=deployment(3),
                    metrics_error="connection refused")
    assert conditions(build_status(down, before, T1))[C.COND_SCALING_ACTIVE]["reason"] == "MetricsUnavailable"


def pod(scheduled: dict[str, str] | None = None, waiting: dict[str, str] | None = None,
        terminating: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if scheduled is not None:
        status["conditions"] = [{"type": "PodScheduled", "status": "False", **scheduled}]
    if waiting is not None:
        status["containerStatuses"] = [{"name": "grader", "state": {"waiting": waiting}}]
    meta: dict[str, Any] = {"name": "p"}
    if terminating:
        meta["deletionTimestamp"] = T0
    return {"metadata": meta, "status": status}


def test_pods_say_why_they_are_not_ready() -> None:
    cpu = {"reason": "Unschedulable", "message": "0/1 nodes are available: 1 Insufficient cpu."}
    pods = [pod(scheduled=cpu), pod(scheduled=cpu), pod(waiting={"reason": "ImagePullBackOff",
                                                                 "message": "pull failed"}),
            pod(waiting={"reason": "ContainerCreating"}), pod(scheduled=cpu, terminating=True), pod()]
    problem = pods_problem(pods)
    assert problem == ("2 pod(s) Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.; "
                       "1 pod(s) container grader ImagePullBackOff: pull failed")
    assert pods_problem([pod(), pod(waiting={"reason": "PodInitializing"})]) is None
    obs = Observed(generation=1, provisioned=PROVISIONED, desired_replicas=3, deployment=deployment(1),
                   pods_problem=problem)
    ready = conditions(build_status(obs, None, T0))[C.COND_READY]
    assert ready["reason"] == "GradersNotReady"
    assert ready["message"].startswith("1/3 graders ready: 2 pod(s) Unschedulable") and "Insufficient cpu" in \
        ready["message"]


def test_a_queue_claimed_twice_is_a_condition_in_both() -> None:
    claims = {("a", "one"): ("http://xq", "q1"), ("b", "two"): ("http://xq", "q1"),
              ("a", "three"): ("http://xq", "q2"), ("c", "four"): ("http://other", "q1")}
    assert queue_conflicts(claims) == {("a", "one"): [("b", "two")], ("b", "two"): [("a", "one")]}
    obs = Observed(generation=1, provisioned=PROVISIONED, desired_replicas=1, deployment=deployment(1),
                   queued=0, in_flight=0, queue_conflict="queue q1 is also claimed by b/two")
    cond = conditions(build_status(obs, None, T0))[C.COND_QUEUE_CONFLICT]
    assert cond["status"] == "True" and cond["reason"] == "QueueClaimedTwice" and "b/two" in cond["message"]
    clear = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=1,
                                  deployment=deployment(1), queued=0, in_flight=0), None, T0)
    assert C.COND_QUEUE_CONFLICT not in conditions(clear)


def test_an_unreachable_xqueue_server_has_a_printed_field() -> None:
    """The outage showed only in `describe`; `kubectl get` said Ready (issue 12). status.xqueue is a column."""
    up = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2, deployment=deployment(2),
                               queued=0, in_flight=0), None, T0)
    assert up["xqueue"] == C.XQUEUE_CONNECTED
    down = build_status(Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2, deployment=deployment(2),
                                 metrics_error="connection refused"), up, T1)
    assert down["xqueue"] == C.XQUEUE_UNREACHABLE
    assert status_differs(down, up)
    # No reading yet after a restart over a healthy object: the last answer stays (a restart writes nothing).
    no_reading = Observed(generation=1, provisioned=PROVISIONED, desired_replicas=2, deployment=deployment(2))
    assert build_status(no_reading, up, T1)["xqueue"] == C.XQUEUE_CONNECTED
    assert "xqueue" not in build_status(no_reading, None, T0)  # never read: no claim either way
