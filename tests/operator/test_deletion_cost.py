"""Pod-deletion-cost before a scale-down: idle grader pods go first, busy ones are kept."""

from __future__ import annotations

from typing import Any

import pytest

from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.resources import Owner, selector_labels
from coursegrader_operator.runtime import Grader, Runtime
from coursegrader_operator.scaling import DELETION_COST_ANNOTATION, QueueLoad, deletion_costs
from coursegrader_operator.spec import CourseGraderSpec
from coursegrader_operator.xqueue import Auth, XQueueError, _load


def test_costs_are_in_flight_counts_per_pod_ip() -> None:
    pods = [("a", "10.244.0.1", None), ("b", "10.244.0.2", None), ("c", "10.244.0.3", None)]
    assert deletion_costs(pods, {"10.244.0.2": 3, "10.244.0.3": 1}) == {"a": "0", "b": "3", "c": "1"}


def test_only_changed_annotations_are_returned() -> None:
    pods = [("a", "10.0.0.1", "0"), ("b", "10.0.0.2", "2"), ("c", "10.0.0.3", "5"), ("d", "10.0.0.4", "1")]
    assert deletion_costs(pods, {"10.0.0.2": 2, "10.0.0.3": 1}) == {"c": "1", "d": "0"}
    assert deletion_costs([("a", "10.0.0.1", "0")], {}) == {}


def test_pods_without_ip_or_unknown_addresses_cost_zero() -> None:
    # A pending pod has no IP; an address behind NAT/a proxy matches no pod: both count as idle.
    pods = [("pending", None, None), ("empty", "", "4"), ("x", "10.0.0.9", None)]
    assert deletion_costs(pods, {"127.0.0.1": 7, "": 3}) == {"pending": "0", "empty": "0", "x": "0"}


def test_costs_are_bounded_int32_and_never_negative() -> None:
    pods = [("big", "10.0.0.1", None), ("neg", "10.0.0.2", None)]
    assert deletion_costs(pods, {"10.0.0.1": 2**40, "10.0.0.2": -3}) == {"big": str(2**31 - 1), "neg": "0"}


def test_length_reply_with_and_without_per_grader_figures() -> None:
    old = _load({"queue": "q", "queued": 1, "in_flight": 2}, "q")
    assert old.in_flight_by_grader is None  # older servers / upstream: annotation is skipped
    new = _load({"queue": "q", "queued": 1, "in_flight": 2, "in_flight_by_grader": {"10.0.0.1": 2}}, "q")
    assert new.in_flight_by_grader == {"10.0.0.1": 2}
    assert new == old  # the per-grader map does not take part in the scaler's comparisons
    assert _load({"queued": 0, "in_flight_by_grader": "junk"}, "q").in_flight_by_grader is None
    assert _load({"queued": 0, "in_flight_by_grader": {"a": "x"}}, "q").in_flight_by_grader is None


class FakeKube:
    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.calls: list[tuple[str, ...]] = []

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: dict[str, str]) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, namespace, ",".join(sorted(label_selector))))
        return self.pods

    async def merge_patch(self, api_version: str, kind: str, namespace: str, name: str,
                          patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", kind, name, patch["metadata"]["annotations"][DELETION_COST_ANNOTATION]))
        return {}

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.calls.append(("apply", obj["kind"], str(obj["spec"]["replicas"])))
        return {"metadata": {"resourceVersion": "1"}, "spec": obj["spec"]}


class FakeXQueue:
    def __init__(self, reply: QueueLoad | None) -> None:
        self.reply = reply
        self.calls = 0

    async def queue_length(self, base_url: str, queue: str, auth: Auth) -> QueueLoad:
        self.calls += 1
        if self.reply is None:
            raise XQueueError("cannot reach the XQueue server", unreachable=True)
        return self.reply


def pod(name: str, ip: str | None, cost: str | None = None, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if cost is not None:
        meta["annotations"] = {DELETION_COST_ANNOTATION: cost}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip} if ip else {}}


def grader(owner: Owner, spec: CourseGraderSpec, load: QueueLoad | None, applied: int, desired: int) -> Grader:
    body = {"metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid}, "spec": {}}
    g = Grader(key=(owner.namespace, owner.name), body=body, spec=spec, load=load)
    g.applied_replicas, g.desired_replicas = applied, desired
    g.creds = Auth(username="grader", password="pw")
    return g


PODS = [pod("idle", "10.244.0.1"), pod("busy", "10.244.0.2"), pod("marked", "10.244.0.3", "0"),
        pod("gone", "10.244.0.4", terminating=True)]


async def test_scale_down_annotates_pods_before_patching_replicas(owner: Owner, spec: CourseGraderSpec) -> None:
    kube, xq = FakeKube(PODS), FakeXQueue(None)
    load = QueueLoad(0, 2, in_flight_by_grader={"10.244.0.2": 2})
    runtime = Runtime(OperatorConfig(), kube, xq)  # type: ignore[arg-type]
    await runtime.apply_deployment(grader(owner, spec, load, applied=4, desired=2))
    assert kube.calls[0] == ("list", "Pod", owner.namespace, ",".join(sorted(selector_labels(owner))))
    assert sorted(kube.calls[1:3]) == [("patch", "Pod", "busy", "2"), ("patch", "Pod", "idle", "0")]
    assert kube.calls[3:] == [("apply", "Deployment", "2")]  # "marked" unchanged, "gone" terminating
    assert xq.calls == 0  # the scaler's own reading had the per-grader figures


@pytest.mark.parametrize("applied", [2, 3])
async def test_no_pod_calls_unless_scaling_down(owner: Owner, spec: CourseGraderSpec, applied: int) -> None:
    kube, xq = FakeKube(PODS), FakeXQueue(None)
    load = QueueLoad(0, 2, in_flight_by_grader={"10.244.0.2": 2})
    await Runtime(OperatorConfig(), kube, xq).apply_deployment(  # type: ignore[arg-type]
        grader(owner, spec, load, applied=applied, desired=3))
    assert kube.calls == [("apply", "Deployment", "3")] and xq.calls == 0


async def test_without_per_grader_figures_asks_once_then_skips(owner: Owner, spec: CourseGraderSpec) -> None:
    # Admin mode reads all queues at once (no per-grader figures): one per-queue request on scale-down;
    # an older server without the field, or an unreachable one, means no annotations, but still the scale.
    for reply in (QueueLoad(0, 0), None):
        kube, xq = FakeKube(PODS), FakeXQueue(reply)
        await Runtime(OperatorConfig(), kube, xq).apply_deployment(  # type: ignore[arg-type]
            grader(owner, spec, QueueLoad(0, 0), applied=4, desired=1))
        assert kube.calls == [("apply", "Deployment", "1")] and xq.calls == 1
    kube, xq = FakeKube(PODS), FakeXQueue(QueueLoad(0, 1, in_flight_by_grader={"10.244.0.1": 1}))
    await Runtime(OperatorConfig(), kube, xq).apply_deployment(  # type: ignore[arg-type]
        grader(owner, spec, QueueLoad(0, 1), applied=4, desired=1))
    assert sorted(kube.calls[1:3]) == [("patch", "Pod", "busy", "0"), ("patch", "Pod", "idle", "1")]
    assert kube.calls[-1] == ("apply", "Deployment", "1") and xq.calls == 1
