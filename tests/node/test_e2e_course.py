"""End to end on the real node (tier C), as a course team runs it: ``helm install`` of the chart with the
locally built images (two server replicas, in-chart PostgreSQL, the operator), ``kubectl apply`` of a
CourseGrader whose graders clone the example course from inside the cluster, and an LMS pod that
submits like edx-platform and receives the callbacks through its own Service. Every pod runs in a
namespace enforcing Pod Security "restricted"; the grades come from real grader pods.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.node.chart import (  # noqa: F401 - installed_system_fixture is a fixture
    DEMO_GRADES,
    InstalledSystem,
    demo_submissions,
    grade_of,
    installed_system_fixture,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def coursegrader_row(table: str, name: str) -> list[str]:
    """The columns of one row of ``kubectl get coursegraders``: NAME QUEUE READY QUEUED PHASE AGE."""
    header, *rows = table.strip().splitlines()
    assert header.split()[:5] == ["NAME", "QUEUE", "READY", "QUEUED", "PHASE"], header
    return next(row.split() for row in rows if row.split()[0] == name)


def ready_replicas(system: InstalledSystem, kind: str, name: str) -> int:
    obj = json.loads(system.kubectl("get", kind, name, "-o", "json").stdout)
    return int(obj["status"].get("readyReplicas") or 0)


def test_course_team_installs_the_chart_and_the_lms_gets_the_right_grades(installed_system: InstalledSystem) -> None:
    system = installed_system
    marks = system.marks
    print(f"\nhelm install --wait: {marks['helm_install_done'] - marks['helm_install_started']:.1f} s; "
          f"CourseGrader Ready {marks['coursegrader_ready'] - marks['coursegrader_applied']:.1f} s after apply")

    # Everything runs in a namespace that enforces "restricted": the pods exist, so they were admitted.
    namespace = json.loads(system.cluster.kubectl("get", "namespace", system.namespace, "-o", "json").stdout)
    assert namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    assert ready_replicas(system, "deployment", f"{system.fullname}-server") == 2
    assert ready_replicas(system, "statefulset", f"{system.fullname}-postgresql") == 1
    assert ready_replicas(system, "deployment", f"{system.fullname}-operator") == 1

    # The course as course ops see it: Ready, its queue, its graders.
    row = coursegrader_row(system.coursegraders_table(), system.coursegrader)
    assert row[1] == system.queue and row[4] == "Ready", row
    ready, desired = row[2].split("/")
    assert int(ready) == int(desired) >= 1, row
    graders = system.grader_pods()
    assert graders and all(p["status"]["phase"] == "Running" for p in graders)
    images = {c["image"] for p in graders for c in p["spec"]["containers"]}
    assert images == {system.cluster.images["xqueue-grader-demo"]}

    # The LMS submits the correct, incorrect and broken answers; the graders' results come back to it.
    started = time.monotonic()
    submitted = system.submit(demo_submissions())
    assert [(s["label"], s["error"]) for s in submitted] == [("correct", None), ("incorrect", None), ("broken", None)]
    assert all(s["queue_length"] is not None and int(s["queue_length"]) >= 1 for s in submitted), submitted
    records = system.wait_for_grades([s["key"] for s in submitted], timeout=240)
    print(f"three grades received {time.monotonic() - started:.1f} s after submitting")
    by_label = {r["label"]: r for r in records.values()}
    assert {label: grade_of(r) for label, r in by_label.items()} == DEMO_GRADES, _messages(by_label)
    for record in records.values():
        (callback, *again) = record["callbacks"]
        assert callback["problem"] is None, callback  # a reply edx-platform accepts: correct, score, msg as XML
        assert callback["header_verbatim"] is True  # XQueue echoed the LMS's own header
        assert callback["path"].endswith("/score_update")
        assert not again or all(c["score"] == callback["score"] for c in again)  # at-least-once, same grade
    assert "SyntaxError" in by_label["broken"]["callbacks"][0]["msg"], _messages(by_label)
    assert "Hi World" in by_label["incorrect"]["callbacks"][0]["msg"], _messages(by_label)

    # Graded by the grader pods (their own log lines), and the queue is empty again.
    logs = system.kubectl("logs", "-l", f"app.kubernetes.io/instance={system.coursegrader}", "-c", "grader",
                          "--tail=-1", "--prefix").stdout
    graded = [json.loads(line.split(" ", 1)[1]) for line in logs.splitlines() if '"msg": "graded"' in line]
    assert len(graded) >= 3 and all(g["delivered"] for g in graded), logs[-3000:]
    sandbox = next(json.loads(line.split(" ", 1)[1]) for line in logs.splitlines() if '"sandbox ready"' in line)
    print(f"grader sandbox in the pod: {sandbox.get('layers')}, missing {sandbox.get('missing_layers')}")
    assert sandbox["seccomp"] is True, sandbox

    wait_until(lambda: coursegrader_row(system.coursegraders_table(), system.coursegrader)[3] == "0", 30,
               "QUEUED 0 in kubectl get coursegraders", diagnostics=system.diagnostics)


def _messages(by_label: dict[str, dict[str, Any]]) -> str:
    return "\n".join(f"[{label}] {r['callbacks'][0].get('msg', '')[:600]}" for label, r in by_label.items()
                     if r["callbacks"])
