"""Scaling and faults with real pods on the real node (tier C).

The whole system runs in pods: the chart (two server replicas, in-chart PostgreSQL, the operator),
an in-cluster LMS that submits like edx-platform and records the callbacks, and grader Deployments
the operator creates from CourseGraders. The test process acts only through the apiserver and
port-forwards on 127.0.0.1, and as the node's owner (SIGKILL of a container's host processes).

Every test ends with the LMS's own record: exactly one correct grade per submission.
Slow problems: the example course's `square` with a correct answer that sleeps in the sandboxed
student run, so a grading slot stays busy for a known time.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.faults import (
    SQUARE,
    Lms,
    Release,
    Sampler,
    assert_exactly_one_correct_grade,
    lms_client,
    slow_square,
)
from tests.node.podops import (
    container_host_pids,
    container_id,
    container_status,
    get_json,
    kill_container_hard,
    logs,
    pods,
    wait_for,
)

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(900)]

LEASE_SECONDS = 20  # short, so a submission whose grader died comes back within the test
DOWN_WINDOW = 20    # scaleDownWindowSeconds of the burst test


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def release(real_cluster: Any) -> Iterator[Release]:
    from tests.node.system import installed_release

    with installed_release(real_cluster, lease_seconds=LEASE_SECONDS) as rel:
        yield rel


@pytest.fixture
def lms(release: Release) -> Iterator[Lms]:
    with lms_client(release) as client:
        yield client


def graded_counts(release: Release, pod_names: list[str]) -> dict[str, int]:
    """How many submissions each grader pod put a result for, from its own log ("graded" lines)."""
    counts = {}
    for name in pod_names:
        text = logs(release.cluster, release.namespace, name, "grader")
        counts[name] = sum(1 for line in text.splitlines() if '"msg": "graded"' in line)
    return counts


def test_burst_scales_up_drains_and_scales_down(release: Release, lms: Lms) -> None:
    cg, queue = "burst", unique("burst")
    release.apply_coursegrader(cg, queue, slots=1, drainSeconds=20, sandbox={"wallSeconds": 10},
                               scaling={"minReplicas": 1, "maxReplicas": 3, "scaleDownWindowSeconds": DOWN_WINDOW})
    try:
        (first,) = release.wait_graders_ready(cg, 1)
        sampler = Sampler(release, f"{cg}-grader")
        started = time.monotonic()
        submitted = lms.submit(queue, [slow_square(3)] * 12, label="burst")
        keys = [s["key"] for s in submitted]
        assert not [s for s in submitted if s["error"]], submitted
        lms.wait_graded(keys, timeout=180)
        drained = time.monotonic()
        # New pods became Ready and pulled work: every pod that existed graded something.
        names = [p["metadata"]["name"] for p in release.grader_pods(cg)]
        counts = graded_counts(release, names)
        assert_exactly_one_correct_grade(lms, keys)
        # Back down after the window, and not before it.
        wait_for("the burst Deployment back at 1 replica", lambda: release.deployment(f"{cg}-grader")["spec"]
                 ["replicas"] == 1, DOWN_WINDOW + 60, interval=1)
        samples = sampler.stop()
    finally:
        release.delete_coursegrader(cg)
    peak = max(s[1] for s in samples)
    peak_ready = max(s[2] for s in samples)
    scaled_down_at = next(t for t, spec, _ in samples if t > drained and spec == 1) if any(
        t > drained and spec == 1 for t, spec, _ in samples) else time.monotonic()
    print(f"burst: 12 submissions graded in {drained - started:.1f} s; replicas {[s[1] for s in samples][::5]}; "
          f"graded per pod {counts}; down {scaled_down_at - drained:.1f} s after the drain")
    assert peak == 3 and peak_ready == 3, samples
    assert len(counts) == 3 and all(n >= 1 for n in counts.values()), counts
    assert sum(counts.values()) == 12, counts
    assert first["metadata"]["name"] in counts
    # The last outstanding submission finished shortly before `drained`; the window counts from there.
    assert scaled_down_at - drained >= DOWN_WINDOW - 8, (scaled_down_at - drained, samples)


def test_deleting_a_grader_pod_mid_grading_drains_it(release: Release, lms: Lms) -> None:
    cg, queue = "drain", unique("drain")
    release.apply_coursegrader(cg, queue, slots=1, drainSeconds=30, sandbox={"wallSeconds": 15},
                               scaling={"minReplicas": 2, "maxReplicas": 2})
    try:
        release.wait_graders_ready(cg, 2)
        (sub,) = lms.submit(queue, [slow_square(8)], label="drain")
        busy = release.pod_grading(cg, queue)
        name = busy["metadata"]["name"]
        # Its whole log, followed until the container exits: the drain must show in it.
        followed: list[str] = []
        follower = threading.Thread(target=lambda: followed.append(release.kubectl(
            "logs", "-f", "-n", release.namespace, name, "-c", "grader", check=False, timeout=120).stdout),
            daemon=True)
        follower.start()
        deleted_at = time.monotonic()
        release.kubectl("delete", "pod", "-n", release.namespace, name, "--wait=false")
        # Follow the pod until it is gone: its grader must finish the submission and exit 0.
        last: dict[str, Any] = {}

        def gone() -> bool:
            nonlocal last
            found = [p for p in release.grader_pods(cg) if p["metadata"]["name"] == name]
            if not found:
                return True
            last = found[0]
            return False

        wait_for(f"deleted pod {name} gone", gone, 90, interval=0.5)
        follower.join(timeout=30)
        text = "".join(followed)
        results = lms.wait_graded([sub["key"]], timeout=30)
        assert_exactly_one_correct_grade(lms, [sub["key"]])
        latency = results[sub["key"]]["latency_seconds"]
        release.wait_graders_ready(cg, 2)
    finally:
        release.delete_coursegrader(cg)
    terminated = (container_status(last, "grader").get("state") or {}).get("terminated") or {}
    print(f"drain: pod deleted mid-grading, grade after {latency:.1f} s, pod gone after "
          f"{time.monotonic() - deleted_at:.1f} s, exit {terminated.get('exitCode')}")
    # The deleted pod itself put the result and then stopped in order (no re-offer after the lease:
    # that would take >= 20 s).
    graded_line = next((line for line in text.splitlines() if '"msg": "graded"' in line), "")
    assert "stop requested" in text and '"delivered": true' in graded_line, text[-3000:]
    assert '"msg": "grader stopped"' in text, text[-3000:]
    assert latency < LEASE_SECONDS, latency
    assert terminated.get("exitCode") in (0, None), terminated


def test_hard_killed_grader_comes_back_after_the_lease(release: Release, lms: Lms) -> None:
    cg, queue = "killed", unique("killed")
    release.apply_coursegrader(cg, queue, slots=1, drainSeconds=30, sandbox={"wallSeconds": 15},
                               scaling={"minReplicas": 2, "maxReplicas": 2})
    try:
        release.wait_graders_ready(cg, 2)
        (sub,) = lms.submit(queue, [slow_square(10)], label="kill")
        busy = release.pod_grading(cg, queue)
        name = busy["metadata"]["name"]
        restarts = int(container_status(busy, "grader").get("restartCount") or 0)
        # SIGKILL to every process of the grader container from the host, no drain, no signal handler.
        killed = kill_container_hard(container_id(busy, "grader"))
        results = lms.wait_graded([sub["key"]], timeout=LEASE_SECONDS + 90)
        assert_exactly_one_correct_grade(lms, [sub["key"]])
        latency = results[sub["key"]]["latency_seconds"]
        pod = get_json(release.cluster, "pod", "-n", release.namespace, name)
        status = container_status(pod, "grader")
        release.wait_graders_ready(cg, 2)
    finally:
        release.delete_coursegrader(cg)
    print(f"kill: {len(killed)} processes killed; graded once after {latency:.1f} s (lease {LEASE_SECONDS} s)")
    # It came back only after its lease: nothing answered for it in between.
    assert latency >= LEASE_SECONDS, latency
    assert int(status.get("restartCount") or 0) > restarts, status
    assert ((status.get("lastState") or {}).get("terminated") or {}).get("exitCode") == 137, status


def test_server_rolling_restart_under_load_loses_nothing(release: Release, lms: Lms) -> None:
    cg, queue = "rolling", unique("rolling")
    release.apply_coursegrader(cg, queue, slots=2, scaling={"minReplicas": 2, "maxReplicas": 2})
    submitted: list[dict[str, Any]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                submitted.extend(lms.submit(queue, [SQUARE] * 2, label="roll"))
            except BaseException as exc:  # surfaced below
                failures.append(exc)
                return
            stop.wait(0.3)

    try:
        release.wait_graders_ready(cg, 2)
        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        time.sleep(3)
        before = len(submitted)
        release.kubectl("rollout", "restart", "deployment", release.server, "-n", release.namespace)
        release.kubectl("rollout", "status", "deployment", release.server, "-n", release.namespace,
                        "--timeout=240s", timeout=250)
        time.sleep(3)
        stop.set()
        thread.join(timeout=60)
        assert not failures, failures
        errors = [s for s in submitted if s["error"]]
        accepted = [s["key"] for s in submitted if not s["error"]]
        lms.wait_graded(accepted, timeout=180)
        assert_exactly_one_correct_grade(lms, accepted)
    finally:
        stop.set()
        release.delete_coursegrader(cg)
    print(f"rolling restart: {len(submitted)} submissions ({len(submitted) - before} during the rollout), "
          f"{len(errors)} refused at submit, all accepted ones graded once")
    assert len(submitted) - before >= 10, "the load did not run during the rollout"
    # The LMS must not see errors either: a refused submission is one a student has to repeat.
    assert not errors, [(s["label"], s["submitted_at"], s["error"]) for s in errors]


def process_state(pid: int) -> str | None:
    """The state letter of a host process (T: stopped), None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def test_operator_killed_converges_on_changes_made_while_down(release: Release, lms: Lms) -> None:
    cg, queue = "steer", unique("steer")
    release.apply_coursegrader(cg, queue, slots=1, scaling={"minReplicas": 1, "maxReplicas": 3})
    try:
        release.wait_graders_ready(cg, 1)
        (op,) = [p for p in pods(release.cluster, release.namespace, "app.kubernetes.io/component=operator")
                 if not p["metadata"].get("deletionTimestamp")]
        restarts = int(container_status(op, op["spec"]["containers"][0]["name"]).get("restartCount") or 0)
        cid = container_id(op, op["spec"]["containers"][0]["name"])
        # Frozen first (SIGSTOP from the host), so no operator code runs while the changes are made; a
        # killed container can be restarted by the kubelet within a second, before the changes land.
        frozen = container_host_pids(cid)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        wait_for("the operator frozen", lambda: all(process_state(pid) in ("T", None) for pid in frozen), 10,
                 interval=0.05)
        # While it is down: a spec change (more replicas, a new wall-clock limit in the ConfigMap) and
        # drift (the ConfigMap deleted).
        release.patch_coursegrader(cg, {"spec": {"scaling": {"minReplicas": 2}, "sandbox": {"wallSeconds": 12}}})
        release.kubectl("delete", "configmap", f"{cg}-grader-config", "-n", release.namespace)
        # Proof that no operator process ran while the changes were made (the node is this host): the
        # frozen ones are all its container had, and they are still stopped.
        assert container_host_pids(cid) == frozen, "the operator's container changed while frozen"
        assert all(process_state(pid) == "T" for pid in frozen), "an operator process ran during the changes"
        killed = kill_container_hard(cid)  # then killed without any handler running: events it held are lost
        wait_for("the killed operator processes gone", lambda: not any(Path(f"/proc/{pid}").exists()
                                                                      for pid in killed), 10, interval=0.05)
        changed_at = time.monotonic()

        def converged() -> bool:
            body = release.coursegrader(cg)
            status = body.get("status") or {}
            config = get_json(release.cluster, "configmap", "-n", release.namespace, f"{cg}-grader-config")
            return (status.get("observedGeneration") == body["metadata"]["generation"]
                    and status.get("phase") == "Ready"
                    and release.deployment(f"{cg}-grader")["spec"]["replicas"] == 2
                    and config["data"].get("XQGRADER_LIMIT_WALL_SECONDS") == "12")

        release.kubectl("wait", "--for=create", "configmap", f"{cg}-grader-config", "-n", release.namespace,
                        "--timeout=120s", timeout=130)
        wait_for("the CourseGrader reconciled after the operator restart", converged, 120, interval=1)
        took = time.monotonic() - changed_at
        release.wait_graders_ready(cg, 2)
        op_after = get_json(release.cluster, "pod", "-n", release.namespace, op["metadata"]["name"])
        assert int(container_status(op_after, op["spec"]["containers"][0]["name"]).get("restartCount") or 0) > restarts
        (sub,) = lms.submit(queue, [SQUARE], label="steer")
        lms.wait_graded([sub["key"]], timeout=60)
        assert_exactly_one_correct_grade(lms, [sub["key"]], settle=1)
    finally:
        release.delete_coursegrader(cg)
    print(f"operator: killed, changes made while down reconciled {took:.1f} s later")


def test_student_code_may_fork_while_other_courses_share_the_node(release: Release, lms: Lms) -> None:
    """RLIMIT_NPROC counts every task of a uid on the node (pods share the host's user namespace).
    When every grader ran as one uid, three busy grader pods of another course left this course's
    student code unable to fork at all; each course now has its own uid (resources.grader_uid)."""
    cg, queue = "forks", unique("forks")
    release.apply_coursegrader("neighbours", unique("neighbours"), slots=1,
                               scaling={"minReplicas": 3, "maxReplicas": 3})
    release.apply_coursegrader(cg, queue, slots=1, scaling={"minReplicas": 1, "maxReplicas": 1})
    try:
        release.wait_graders_ready("neighbours", 3)
        release.wait_graders_ready(cg, 1)
        forking = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n" + SQUARE
        (sub,) = lms.submit(queue, [forking], label="fork")
        lms.wait_graded([sub["key"]], timeout=60)
        (callback,) = lms.results(with_msg=True)[sub["key"]]["callbacks"]
        assert "too many processes" not in callback["msg"], "the student run could not fork"
        assert_exactly_one_correct_grade(lms, [sub["key"]], settle=1)
    finally:
        release.delete_coursegrader(cg)
        release.delete_coursegrader("neighbours")
