"""reconcile.py: applying the Deployment (pod-deletion cost on scale-down), recording scales only
once applied, drift messages, and the Applied event after a restart."""

from __future__ import annotations

from typing import Any

import pytest

from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.resources import Owner, selector_labels
from coursegrader_operator.scaling import DELETION_COST_ANNOTATION, QueueLoad
from coursegrader_operator.spec import CourseGraderSpec
from coursegrader_operator.state import Course
from tests.operator.fakes import Events, FakeKube, FakeXQueue, course, make_reconciler


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


def fresh(owner: Owner, raw: dict[str, Any], generation: int, status: dict[str, Any] | None = None) -> Course:
    """A CourseGrader as a (re)started operator first sees it."""
    body = {"metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid,
                         "generation": generation}, "spec": raw, "status": status or {}}
    return Course.from_body((owner.namespace, owner.name), body)


async def test_first_reconcile_creates_everything_and_says_so(owner: Owner, raw_spec: dict[str, Any]) -> None:
    kube, events = FakeKube(), Events()
    c = fresh(owner, raw_spec, 1)
    await make_reconciler(kube, FakeXQueue(None), events).reconcile(c, ())
    applied = [m for r, m, _ in events.items if r == "Applied"]
    assert len(applied) == 1
    for kind in ("ServiceAccount", "ConfigMap", "NetworkPolicy", "Deployment"):
        assert f"created {kind}" in applied[0]
    assert [call for call in kube.calls if call[0] == "apply" and call[1] == "Deployment"] == \
        [("apply", "Deployment", "1")]


async def test_spec_change_made_while_the_operator_was_down_gets_an_applied_event(
        owner: Owner, raw_spec: dict[str, Any]) -> None:
    """The change was applied silently after a restart (issue 12)."""
    kube = FakeKube()
    first = fresh(owner, raw_spec, 1)
    await make_reconciler(kube, FakeXQueue(None)).reconcile(first, ())
    stored = {"observedGeneration": 1}
    raw_spec["slots"] = 4  # edited while no operator ran
    events = Events()
    restarted = fresh(owner, raw_spec, 2, stored)
    await make_reconciler(kube, FakeXQueue(None), events).reconcile(restarted, ())
    applied = [m for r, m, _ in events.items if r == "Applied"]
    assert len(applied) == 1, events.items
    assert "updated ConfigMap course-a-grader-config" in applied[0]
    assert "updated Deployment course-a-grader" in applied[0]
    assert "ServiceAccount" not in applied[0]  # unchanged objects are not claimed as updated


async def test_restart_over_an_unchanged_spec_writes_nothing(owner: Owner, raw_spec: dict[str, Any]) -> None:
    kube = FakeKube()
    await make_reconciler(kube, FakeXQueue(None)).reconcile(fresh(owner, raw_spec, 1), ())
    kube.calls.clear()
    events = Events()
    await make_reconciler(kube, FakeXQueue(None), events).reconcile(
        fresh(owner, raw_spec, 1, {"observedGeneration": 1}), ())
    assert not [call for call in kube.calls if call[0] == "apply"]
    assert "Applied" not in events.reasons()


async def test_a_relisted_unchanged_secret_is_not_drift(owner: Owner, raw_spec: dict[str, Any]) -> None:
    """After an API outage the re-listed Secret was blamed for a repair it did not cause (issue 12)."""
    raw_spec["server"] = {"url": raw_spec["server"]["url"], "provision": True}
    kube = FakeKube()

    class Admin(FakeXQueue):
        async def ensure_queue(self, *args: Any) -> bool:
            return True

        async def ensure_user(self, *args: Any) -> None:
            return None

    xq = Admin(QueueLoad(0, 0))
    reconciler = make_reconciler(kube, xq, config=OperatorConfig(admin_username="admin", admin_password="pw"))
    c = fresh(owner, raw_spec, 1)
    await reconciler.reconcile(c, ())
    secret = kube.objects[("Secret", "course-a-grader-credentials")]
    relisted = {**secret, "metadata": {**secret["metadata"], "resourceVersion": "999"}}
    assert reconciler.drift_of(c, "Secret", relisted) is None
    edited = {**relisted, "data": {**secret["data"], "password": "b3RoZXI="}}
    assert reconciler.drift_of(c, "Secret", edited) == ".data"


async def test_deployment_drift_is_measured_against_the_applied_replicas(
        owner: Owner, raw_spec: dict[str, Any]) -> None:
    kube, xq = FakeKube(), FakeXQueue(QueueLoad(9, 0))
    reconciler = make_reconciler(kube, xq)
    c = fresh(owner, raw_spec, 1)
    await reconciler.reconcile(c, ())
    deployment = kube.objects[("Deployment", "course-a-grader")]
    assert reconciler.drift_of(c, "Deployment", deployment) is None
    c.scale.decision = None
    tampered = {**deployment, "spec": {**deployment["spec"], "replicas": 7}}
    assert reconciler.drift_of(c, "Deployment", tampered) == ".spec.replicas"
