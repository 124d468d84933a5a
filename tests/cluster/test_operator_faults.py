"""Operator faults found by an outside check (issue 12), each against the real control plane.

The glue-level faults (scale recorded before the patch, backoff defeated by the scaler's tick,
unchanged Secrets blamed for repairs) have unit tests with an injected clock in tests/operator
(test_workqueue.py, test_scaler.py, test_reconcile.py); these are the ones only the API server shows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from coursegrader_operator import constants as C
from tests.cluster.controlplane import ControlPlane
from tests.cluster.operator_harness import (
    Rest,
    condition,
    count_lines,
    coursegrader_manifest,
    is_ready,
    running_operator,
    secret_manifest,
    wait_for,
)
from xqueue_server.testing import ServerThread

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def ns(kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, rest: Rest,
       operator_env: dict[str, str]) -> str:
    rest.create("Secret", kube_namespace, secret_manifest("grader-login", "grader", "grader-password"))
    return kube_namespace


@pytest.fixture
def second_ns(kube: ControlPlane, rest: Rest) -> Iterator[str]:
    name = f"xq-test-{uuid.uuid4().hex[:16]}"
    kube.kubectl("create", "namespace", name)
    rest.create("Secret", name, secret_manifest("grader-login", "grader", "grader-password"))
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def reasons(rest: Rest, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in rest.events(ns, name) if e["reason"] == reason]


def test_restart_over_a_healthy_coursegrader_writes_nothing(
        ns: str, rest: Rest, monkeypatch: pytest.MonkeyPatch,
        xqueue_factory: Callable[..., ServerThread]) -> None:
    """ScalingActive flipped to WaitingForMetrics and back on every restart, moving its
    lastTransitionTime (issue 12)."""
    server = xqueue_factory()
    monkeypatch.setenv("XQOP_ADMIN_USERNAME", server.admin.username)
    monkeypatch.setenv("XQOP_ADMIN_PASSWORD", server.admin.password)
    queue = f"course-{uuid.uuid4().hex[:8]}"
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("steady", queue=queue, url=server.url, secret=None))
        wait_for(lambda: (c := rest.get(C.KIND, ns, "steady")) and is_ready(c)
                 and condition(c, C.COND_SCALING_ACTIVE).get("status") == "True", timeout=60,
                 what="Ready with live metrics")
        time.sleep(1.5)  # let the creation's last status write (figures are rate-limited) land
        before = rest.get(C.KIND, ns, "steady")
        deployment_before = rest.get("Deployment", ns, "steady-grader")
    assert before is not None and deployment_before is not None

    with running_operator(ns) as runner:
        # A second object proves the restarted operator has worked through its initial listing.
        rest.create(C.KIND, ns, coursegrader_manifest("probe", queue=f"{queue}-2", url=server.url, secret=None))
        wait_for(lambda: is_ready(rest.get(C.KIND, ns, "probe")), timeout=60, what="the probe Ready")
        deadline = time.monotonic() + 3  # several scale ticks (0.5 s) and a status interval
        while time.monotonic() < deadline:
            after = rest.get(C.KIND, ns, "steady")
            assert after is not None
            assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], \
                (before["status"], after["status"])
            time.sleep(0.2)
    deployment_after = rest.get("Deployment", ns, "steady-grader")
    assert deployment_after is not None
    assert deployment_after["metadata"]["resourceVersion"] == deployment_before["metadata"]["resourceVersion"]
    assert "Traceback" not in runner.output


def test_a_spec_change_made_while_the_operator_was_down_gets_an_applied_event(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("offline-edit"))
        wait_for(lambda: is_ready(rest.get(C.KIND, ns, "offline-edit")), timeout=60, what="Ready")
    rest.patch(C.KIND, ns, "offline-edit", {"spec": {"slots": 4}})
    with running_operator(ns):
        events = wait_for(lambda: [e for e in reasons(rest, ns, "offline-edit", "Applied")
                                   if "updated ConfigMap" in e["message"]],
                          timeout=20, what="an Applied event for the offline edit")
    assert "updated Deployment offline-edit-grader" in events[0]["message"]
    cm = rest.get("ConfigMap", ns, "offline-edit-grader-config")
    assert cm is not None and cm["data"]["XQGRADER_SLOTS"] == "4"


@pytest.mark.parametrize("url", ["not a url; rm -rf /", "file:///etc/passwd", "github.com/org/repo",
                                 "/etc", "ftp://h/r.git"])
def test_schema_rejects_repo_urls_that_cannot_be_cloned(ns: str, rest: Rest, url: str) -> None:
    resp = rest.try_create(C.KIND, ns, coursegrader_manifest("bad-repo", repo={"url": url}))
    assert resp.status_code == 422, (url, resp.status_code, resp.text)
    assert "repo.url must be" in resp.text and "/opt/" in resp.text


def test_schema_accepts_clonable_urls_and_image_paths(ns: str, rest: Rest) -> None:
    for i, url in enumerate(["/opt/xqueue/demo-course", "file:///srv/course", "git@github.com:org/r.git",
                             "ssh://git@git.example.invalid:2222/r.git", "https://[::1]:8443/c.git"]):
        rest.create(C.KIND, ns, coursegrader_manifest(f"good-repo-{i}", repo={"url": url}))


def test_two_coursegraders_claiming_one_queue_are_told(ns: str, second_ns: str, rest: Rest) -> None:
    with running_operator(ns, second_ns):
        rest.create(C.KIND, ns, coursegrader_manifest("first", queue="shared-queue"))
        rest.create(C.KIND, second_ns, coursegrader_manifest("second", queue="shared-queue"))
        for here, name, other in ((ns, "first", f"{second_ns}/second"), (second_ns, "second", f"{ns}/first")):
            def conflict(h: str = here, n: str = name) -> dict[str, Any]:
                return condition(rest.get(C.KIND, h, n), C.COND_QUEUE_CONFLICT)

            def conflict_events(h: str = here, n: str = name) -> list[dict[str, Any]]:
                return reasons(rest, h, n, "QueueConflict")

            cond = wait_for(conflict, timeout=20, what=f"QueueConflict on {name}")
            assert cond["status"] == "True" and other in cond["message"], cond
            event = wait_for(conflict_events, timeout=10,
                             what=f"a QueueConflict event on {name}")
            assert event[0]["type"] == "Warning" and "shared-queue" in event[0]["message"]
        rest.delete(C.KIND, second_ns, "second")
        wait_for(lambda: not condition(rest.get(C.KIND, ns, "first"), C.COND_QUEUE_CONFLICT), timeout=20,
                 what="the conflict cleared once the other CourseGrader is gone")


def test_an_unreachable_server_shows_in_kubectl_get_once_per_outage(kube: ControlPlane, ns: str,
                                                                     rest: Rest) -> None:
    with running_operator(ns) as runner:
        rest.create(C.KIND, ns, coursegrader_manifest("lonely"))  # http://127.0.0.1:9 answers nothing
        wait_for(lambda: condition(rest.get(C.KIND, ns, "lonely"), C.COND_SCALING_ACTIVE).get("reason")
                 == "MetricsUnavailable", timeout=20, what="MetricsUnavailable")
        wide = kube.kubectl("get", "cg", "lonely", "-n", ns, "-o", "wide").stdout.splitlines()
        assert "SCALING" in wide[0].split()
        assert "MetricsUnavailable" in wide[1].split(), wide
        time.sleep(3)  # six more scale ticks of the same outage
        events = reasons(rest, ns, "lonely", "XQueueUnreachable")
        assert len(events) == 1 and events[0]["type"] == "Warning" and events[0]["count"] == 1, events
    assert count_lines(r"XQueue server \S+ is unreachable", runner.output) == 1


def test_unschedulable_graders_say_why(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest(
            "too-big", resources={"requests": {"cpu": "64", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}))
        ready = wait_for(lambda: (c := condition(rest.get(C.KIND, ns, "too-big"), C.COND_READY))
                         and "Insufficient cpu" in c.get("message", "") and c,
                         timeout=30, what="Ready saying why the graders are not scheduled")
    assert ready["status"] == "False" and ready["reason"] == "GradersNotReady"
    assert ready["message"].startswith("0/1 graders ready: 1 pod(s) Unschedulable")
