"""controller.py with in-memory fakes: watch events become work, claims become conflicts, and the
status written reflects both; the work queue's workers run for real on the event loop."""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from coursegrader_operator import constants as C
from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.controller import Controller
from coursegrader_operator.scaling import QueueLoad
from tests.operator.fakes import FakeKube, FakeXQueue


class Posted:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, str]] = []  # name, type, reason, message

    def __call__(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.items.append((body["metadata"]["name"], type_, reason, message))


def body(name: str, namespace: str, uid: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": C.API_VERSION, "kind": C.KIND,
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "generation": generation,
                         "resourceVersion": "1"},
            "spec": copy.deepcopy(spec)}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
async def running() -> AsyncIterator[tuple[Controller, FakeKube, Posted]]:
    kube, posted = FakeKube(), Posted()
    kube.objects[("Secret", "grader-login")] = {"metadata": {"name": "grader-login", "resourceVersion": "5"},
                                                "data": {"username": b64("grader"), "password": b64("pw")}}
    controller = Controller(OperatorConfig(workers=2), kube, FakeXQueue(None), post_event=posted)  # type: ignore[arg-type]
    controller.queue.start()
    try:
        yield controller, kube, posted
    finally:
        await controller.queue.stop()


async def settle(controller: Controller) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if controller.idle:
            return
    raise AssertionError("the work queue did not settle within 2 s")


def last_conditions(controller: Controller, key: tuple[str, str]) -> dict[str, dict[str, Any]]:
    status = controller.courses[key].status.last or {}
    return {c["type"]: c for c in status.get("conditions", [])}


async def test_two_coursegraders_on_one_queue_both_get_the_conflict(
        running: tuple[Controller, FakeKube, Posted], raw_spec: dict[str, Any]) -> None:
    controller, _kube, posted = running
    controller.coursegrader_event(None, body("one", "ns-a", "uid-1", raw_spec))
    controller.coursegrader_event(None, body("two", "ns-b", "uid-2", raw_spec))
    await settle(controller)
    one = last_conditions(controller, ("ns-a", "one"))[C.COND_QUEUE_CONFLICT]
    two = last_conditions(controller, ("ns-b", "two"))[C.COND_QUEUE_CONFLICT]
    assert "ns-b/two" in one["message"] and "ns-a/one" in two["message"]
    warned = sorted(name for name, type_, reason, _ in posted.items
                    if reason == "QueueConflict" and type_ == "Warning")
    assert warned == ["one", "two"]
    controller.coursegrader_event("DELETED", body("two", "ns-b", "uid-2", raw_spec))
    await settle(controller)
    assert C.COND_QUEUE_CONFLICT not in last_conditions(controller, ("ns-a", "one"))


async def test_owned_object_drift_is_repaired_and_named(running: tuple[Controller, FakeKube, Posted],
                                                       raw_spec: dict[str, Any]) -> None:
    controller, kube, posted = running
    controller.coursegrader_event(None, body("one", "ns-a", "uid-1", raw_spec))
    await settle(controller)
    cm = copy.deepcopy(kube.objects[("ConfigMap", "one-grader-config")])
    cm["metadata"]["resourceVersion"] = "900"
    cm["metadata"]["labels"] = {**cm["metadata"]["labels"]}
    cm["data"]["XQGRADER_QUEUE"] = "someone-elses-queue"
    kube.objects[("ConfigMap", "one-grader-config")] = cm
    controller.owned_event("MODIFIED", cm)
    await settle(controller)
    repaired = [m for name, t, reason, m in posted.items if reason == "DriftRepaired"]
    assert repaired == ["ConfigMap one-grader-config changed at .data.XQGRADER_QUEUE -> "
                        "updated ConfigMap one-grader-config"]
    assert kube.objects[("ConfigMap", "one-grader-config")]["data"]["XQGRADER_QUEUE"] == "MITx-6.00x"


async def test_a_restart_over_a_healthy_object_writes_no_status(raw_spec: dict[str, Any]) -> None:
    """Status flipped ScalingActive to WaitingForMetrics and back and dropped lastScaleTime (issue 12)."""
    kube = FakeKube()
    kube.objects[("Secret", "grader-login")] = {"metadata": {"name": "grader-login", "resourceVersion": "5"},
                                                "data": {"username": b64("grader"), "password": b64("pw")}}
    cg = body("one", "ns-a", "uid-1", raw_spec)
    first = Controller(OperatorConfig(workers=2, scale_interval=0.05), kube,  # type: ignore[arg-type]
                       FakeXQueue(QueueLoad(5, 0)))  # type: ignore[arg-type]
    first.start()
    try:
        first.coursegrader_event(None, cg)
        for _ in range(200):  # the scaler reads 5 queued and scales 1 -> 3
            await asyncio.sleep(0.01)
            if first.courses[("ns-a", "one")].applied.replicas == 3 and first.idle:
                break
        await settle(first)
        stored = first.courses[("ns-a", "one")].status.last or {}
    finally:
        await first.stop()
    assert stored["lastScaleTime"] and stored["replicas"] == 3 and stored["queueLength"] == 5
    kube.status_patches.clear()
    applies = len([c for c in kube.calls if c[0] == "apply"])
    restarted = Controller(OperatorConfig(workers=2, scale_interval=0.05), kube,  # type: ignore[arg-type]
                           FakeXQueue(QueueLoad(5, 0)))  # type: ignore[arg-type]
    restarted.start()
    try:
        restarted.coursegrader_event(None, {**cg, "status": stored})
        await settle(restarted)
        await asyncio.sleep(0.3)  # several scaler ticks with the same figures
        await settle(restarted)
    finally:
        await restarted.stop()
    assert kube.status_patches == []
    assert len([c for c in kube.calls if c[0] == "apply"]) == applies  # nothing re-applied either
