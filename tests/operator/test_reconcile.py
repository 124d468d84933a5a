"""reconcile.py: applying the Deployment (pod-deletion cost on scale-down), recording scales only
once applied, drift messages, and the Applied event after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from coursegrader_operator.resources import Owner, selector_labels
from coursegrader_operator.scaling import DELETION_COST_ANNOTATION, QueueLoad
from coursegrader_operator.spec import CourseGraderSpec
from coursegrader_operator.state import Course
from tests.operator.fakes import FakeKube, FakeXQueue, course, make_reconciler


def pod(name: str, ip: str | None, cost: str | None = None, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if cost is not None:
        meta["annotations"] = {DELETION_COST_ANNOTATION: cost}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip} if ip else {}}


def grader(owner: Owner, spec: CourseGraderSpec, load: QueueLoad | None, applied: int, desired: int) -> Course:
    return course(owner, spec, load, applied=applied, desired=desired)


PODS = [pod("idle", "10.244.0.1"), pod("busy", "10.244.0.2"), pod("marked", "10.244.0.3", "0"),
        pod("gone", "10.244.0.4", terminating=True)]


async def test_scale_down_annotates_pods_before_patching_replicas(owner: Owner, spec: CourseGraderSpec) -> None:
    kube, xq = FakeKube(PODS), FakeXQueue(None)
    load = QueueLoad(0, 2, in_flight_by_grader={"10.244.0.2": 2})
    reconciler = make_reconciler(kube, xq)
    await reconciler.apply_deployment(grader(owner, spec, load, applied=4, desired=2))
    assert kube.calls[0] == ("list", "Pod", owner.namespace, ",".join(sorted(selector_labels(owner))))
    assert sorted(kube.calls[1:3]) == [("patch", "Pod", "busy", "2"), ("patch", "Pod", "idle", "0")]
    assert kube.calls[3:] == [("apply", "Deployment", "2")]  # "marked" unchanged, "gone" terminating
    assert xq.calls == 0  # the scaler's own reading had the per-grader figures


@pytest.mark.parametrize("applied", [2, 3])
async def test_no_pod_calls_unless_scaling_down(owner: Owner, spec: CourseGraderSpec, applied: int) -> None:
    kube, xq = FakeKube(PODS), FakeXQueue(None)
    load = QueueLoad(0, 2, in_flight_by_grader={"10.244.0.2": 2})
    await make_reconciler(kube, xq).apply_deployment(
        grader(owner, spec, load, applied=applied, desired=3))
    assert kube.calls == [("apply", "Deployment", "3")] and xq.calls == 0


async def test_without_per_grader_figures_asks_once_then_skips(owner: Owner, spec: CourseGraderSpec) -> None:
    # Admin mode reads all queues at once (no per-grader figures): one per-queue request on scale-down;
    # an older server without the field, or an unreachable one, means no annotations, but still the scale.
    for reply in (QueueLoad(0, 0), None):
        kube, xq = FakeKube(PODS), FakeXQueue(reply)
        await make_reconciler(kube, xq).apply_deployment(
            grader(owner, spec, QueueLoad(0, 0), applied=4, desired=1))
        assert kube.calls == [("apply", "Deployment", "1")] and xq.calls == 1
    kube, xq = FakeKube(PODS), FakeXQueue(QueueLoad(0, 1, in_flight_by_grader={"10.244.0.1": 1}))
    await make_reconciler(kube, xq).apply_deployment(
        grader(owner, spec, QueueLoad(0, 1), applied=4, desired=1))
    assert sorted(kube.calls[1:3]) == [("patch", "Pod", "busy", "0"), ("patch", "Pod", "idle", "1")]
    assert kube.calls[-1] == ("apply", "Deployment", "1") and xq.calls == 1
