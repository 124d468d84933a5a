"""Cluster benchmark (`make bench-cluster`): the whole system in real pods on the local real node.

Everything is real: the tier-C control plane with one kubelet node (containerd, kube-proxy, CoreDNS;
tests/node/realnode.py), the Helm chart with the locally built images (two server replicas, in-chart
PostgreSQL, the operator), the demo CourseGrader (grader pods cloning the example course) and the
in-cluster LMS (xqueue_server/lms_simulator.py) that submits like edx-platform and timestamps every
callback it receives. Latencies are submit -> callback at the LMS, measured inside its pod.

Figures:
1. `helm install` -> first graded submission (helm --wait, course Ready, LMS up, submit -> grade).
2. a burst of N (200) submissions with real grading, every grade checked, drained by one fixed
   grader replica (scaling.enabled false) vs by autoscaling from one replica (maxReplicas M): time
   to drain, per-submission latency p50/p95, peak replicas. Two workloads: ``cpu`` (the three demo
   answers in turn: grading is CPU-bound) and ``waiting`` (a correct answer that sleeps 0.1 s in each
   of the three test calls: grading bound by waiting, where more slots help).
3. in the autoscaled burst: burst start -> Deployment scaled up -> extra pod created -> Ready ->
   pulling ("grader started" in its log, after login) -> its first grade.

The machine's two cores are shared by the control plane, the node, PostgreSQL, the servers, the LMS
and the graders, so extra grader pods add slots, not CPU. Results: bench/results/cluster.json.

Run: make bench-cluster   (as root; or: K8S_TEST_BIN_DIR=... K8S_NODE_BIN_DIR=... XQK8S_IMAGE_MANIFEST=...
.venv/bin/python bench/cluster_bench.py --help)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.node.chart import (  # noqa: E402
    DEMO_ANSWERS,
    DEMO_GRADES,
    DEMO_PROBLEM,
    InstalledSystem,
    grade_of,
    install_system,
    percentile,
    wait_until,
)
from tests.node.realnode import RealNode, load_image_manifest  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "cluster.json"
GRADER_SELECTOR = "app.kubernetes.io/name=xqueue-grader"


# A correct answer that waits 0.1 s per test call (3 calls): grading that is bound by waiting, not CPU,
# like student code with sleeps or slow loops under a wall-clock limit.
WAITING_ANSWER = "import time\n\ndef hello(name):\n    time.sleep(0.1)\n    return 'Hello, ' + name + '!'\n"
GRADES = {**DEMO_GRADES, "waiting": DEMO_GRADES["correct"]}


def burst_items(count: int, workload: str) -> list[dict[str, str]]:
    """``cpu``: the three demo answers in turn (CPU-bound grading); ``waiting``: WAITING_ANSWER only."""
    if workload == "waiting":
        return [{"label": "waiting", "code": WAITING_ANSWER, "problem": DEMO_PROBLEM} for _ in range(count)]
    labels = list(DEMO_ANSWERS)
    return [{"label": labels[i % len(labels)], "code": DEMO_ANSWERS[labels[i % len(labels)]],
             "problem": DEMO_PROBLEM} for i in range(count)]


class PodWatch:
    """Watches the grader pods and Deployment through the API server (127.0.0.1), noting when each
    pod first appears and first turns Ready, and every change of the Deployment's spec.replicas."""

    def __init__(self, node: RealNode, system: InstalledSystem) -> None:
        self.node, self.system = node, system
        self.pod_seen: dict[str, float] = {}
        self.pod_ready: dict[str, float] = {}
        self.replicas: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pods, daemon=True),
                         threading.Thread(target=self._deployment, daemon=True)]

    def __enter__(self) -> PodWatch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _stream(self, list_call: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        import kubernetes

        with contextlib.closing(self.node.api_client()) as api:
            method: Callable[..., Any] = (kubernetes.client.CoreV1Api(api).list_namespaced_pod if list_call == "pods"
                                          else kubernetes.client.AppsV1Api(api).list_namespaced_deployment)
            while not self._stop.is_set():
                watch = kubernetes.watch.Watch()
                # Short server-side timeouts: the loop notices _stop within a few seconds.
                for event in watch.stream(method, self.system.namespace, timeout_seconds=3, **kwargs):
                    yield event["raw_object"] if "raw_object" in event else event["object"].to_dict()
                    if self._stop.is_set():
                        watch.stop()
                        break

    def _pods(self) -> None:
        for pod in self._stream("pods", label_selector=GRADER_SELECTOR):
            name, now = pod["metadata"]["name"], time.time()
            self.pod_seen.setdefault(name, now)
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                self.pod_ready.setdefault(name, now)

    def _deployment(self) -> None:
        name = f"{self.system.coursegrader}-grader"
        for deployment in self._stream("deployments", field_selector=f"metadata.name={name}"):
            replicas = int(deployment["spec"].get("replicas") or 0)
            if not self.replicas or self.replicas[-1][1] != replicas:
                self.replicas.append((time.time(), replicas))


def log_times(system: InstalledSystem, pod: str) -> dict[str, float]:
    """Wall-clock times of a grader pod's 'grader started' and first 'graded' log lines."""
    out = system.kubectl("logs", pod, "-c", "grader", "--tail=-1", check=False).stdout
    times: dict[str, float] = {}
    for line in out.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        key = {"grader started": "started", "graded": "first_graded"}.get(entry.get("msg"))
        if key and key not in times:
            stamp = datetime.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            times[key] = stamp.replace(tzinfo=datetime.UTC).timestamp()
    return times


def grader_pods(system: InstalledSystem) -> list[str]:
    pods = system.pods(GRADER_SELECTOR)
    return [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")]


def settle_to_one_replica(system: InstalledSystem, timeout: float) -> None:
    def one() -> bool:
        deployment = system.grader_deployment()
        return (deployment["spec"]["replicas"] == 1 and (deployment["status"].get("readyReplicas") or 0) == 1
                and len(system.pods(GRADER_SELECTOR)) == 1)

    wait_until(one, timeout, "one grader pod (and no terminating ones)", every=1, diagnostics=system.diagnostics)


def run_burst(node: RealNode, system: InstalledSystem, count: int, workload: str,
              timeout: float) -> dict[str, Any]:
    before = set(grader_pods(system))
    with PodWatch(node, system) as watch:
        time.sleep(1)  # the watches are established
        started = time.time()
        submitted = system.submit(burst_items(count, workload), timeout=timeout)
        errors = [s["error"] for s in submitted if s["error"]]
        records = system.wait_for_grades([s["key"] for s in submitted if not s["error"]], timeout=timeout,
                                         with_msg=False, every=1)
        finished = time.time()
    latencies = [r["latency_seconds"] for r in records.values()]
    received = [r["callbacks"][0]["received_at"] for r in records.values()]
    wrong = sum(1 for r in records.values() if grade_of(r) != GRADES[r["label"]])
    result: dict[str, Any] = {
        "submissions": count, "submit_errors": len(errors), "wrong_grades": wrong,
        "submit_seconds": round(max(s["submitted_at"] for s in submitted) - started, 2),
        "drain_seconds": round(max(received) - started, 2),
        "latency_p50": round(percentile(latencies, 0.50), 2), "latency_p95": round(percentile(latencies, 0.95), 2),
        "latency_max": round(max(latencies), 2),
        "throughput_per_s": round(count / (max(received) - started), 1),
        "peak_replicas": max([n for _t, n in watch.replicas] or [1]),
        "observed_until": round(finished - started, 2),
    }
    if errors:
        result["first_submit_error"] = errors[0]
    scaled = [(t, n) for t, n in watch.replicas if n > 1]
    new_pods = sorted((t, name) for name, t in watch.pod_seen.items() if name not in before)
    if scaled and new_pods:
        first_new = new_pods[0][1]
        logs = log_times(system, first_new)
        extra: dict[str, Any] = {"scaled_up": round(scaled[0][0] - started, 2),
                                 "pod_created": round(watch.pod_seen[first_new] - started, 2)}
        if first_new in watch.pod_ready:
            extra["pod_ready"] = round(watch.pod_ready[first_new] - started, 2)
        if "started" in logs:
            extra["pulling"] = round(logs["started"] - started, 2)
        if "first_graded" in logs:
            extra["first_grade"] = round(logs["first_graded"] - started, 2)
        result["extra_pod_after_burst_start"] = extra
    return result


def create_namespace(node: RealNode) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    node.kubectl("apply", "-f", "-", input=(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n"
        "    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/enforce-version: latest\n"))
    wait_until(lambda: node.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
               30, "ServiceAccount default", every=0.2)
    return name


def run(count: int, max_replicas: int, workloads: list[str], timeout: float) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
                               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    node = RealNode(load_image_manifest())
    try:
        t0 = time.monotonic()
        node.start()
        results["node_start_seconds"] = round(time.monotonic() - t0 - node.timings.get("lock-wait", 0.0), 1)
        namespace = create_namespace(node)
        scaling = {"enabled": True, "minReplicas": 1, "maxReplicas": max_replicas, "scaleDownWindowSeconds": 15}
        with install_system(node, namespace, coursegrader_overrides={"scaling": scaling}) as system:
            marks = system.marks
            (first,) = system.submit([{"label": "correct", "code": DEMO_ANSWERS["correct"], "problem": DEMO_PROBLEM}])
            graded = system.wait_for_grades([first["key"]], timeout=120)[first["key"]]
            assert grade_of(graded) == DEMO_GRADES["correct"], graded
            received = graded["callbacks"][0]["received_at"]
            results["install"] = {
                "helm_install_wait": round(marks["helm_install_done"] - marks["helm_install_started"], 1),
                "coursegrader_ready_after_apply": round(marks["coursegrader_ready"] - marks["coursegrader_applied"], 1),
                "lms_reachable": round(marks["ready"] - marks["helm_install_started"], 1),
                "submit_to_grade": round(received - first["submitted_at"], 2),
                "helm_install_to_first_grade": round(received - marks["helm_install_started"], 1),
            }
            print(f"install: {json.dumps(results['install'])}", flush=True)

            results["bursts"] = {}
            for workload in workloads:
                runs = results["bursts"][workload] = {}
                for mode, enabled in (("fixed_one_replica", False), ("autoscaling_from_one", True)):
                    system.kubectl("patch", "coursegrader", system.coursegrader, "--type=merge", "-p",
                                   json.dumps({"spec": {"scaling": {"enabled": enabled}}}))
                    settle_to_one_replica(system, 180)
                    runs[mode] = run_burst(node, system, count, workload, timeout)
                    print(f"{workload} burst, {mode}: {json.dumps(runs[mode])}", flush=True)
        results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        node.stop()
    return results


def print_table(results: dict[str, Any], count: int, max_replicas: int) -> None:
    install = results["install"]
    print(f"\ncluster benchmark, {results['machine']['cpus']} CPUs, load before {results['machine']['loadavg_before']}")
    print(f"  node + control plane start ........... {results['node_start_seconds']} s")
    print(f"  helm install --wait .................. {install['helm_install_wait']} s")
    print(f"  CourseGrader Ready after apply ....... {install['coursegrader_ready_after_apply']} s")
    print(f"  helm install -> first graded answer .. {install['helm_install_to_first_grade']} s "
          f"(of which submit -> grade {install['submit_to_grade']} s)")
    for workload, runs in results["bursts"].items():
        fixed, auto = runs["fixed_one_replica"], runs["autoscaling_from_one"]
        print(f"  burst of {count}, {workload} grading:     fixed 1 replica | autoscaling 1..{max_replicas}")
        for key, label in (("drain_seconds", "time to drain (s)"), ("latency_p50", "latency p50 (s)"),
                           ("latency_p95", "latency p95 (s)"), ("throughput_per_s", "graded per second"),
                           ("peak_replicas", "peak replicas"), ("wrong_grades", "wrong grades"),
                           ("submit_errors", "submit errors")):
            print(f"    {label:<24} {fixed[key]!s:>15} | {auto[key]!s:>15}")
        extra = auto.get("extra_pod_after_burst_start")
        if extra:
            print("    burst start -> " + ", ".join(f"{k.replace('_', ' ')} {v} s" for k, v in extra.items()))
        else:
            print("    the autoscaled burst did not add a grader pod")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600, help="bound of each burst (s)")
    parser.add_argument("--workloads", default="cpu,waiting",
                        help="comma-separated: cpu (the three demo answers), waiting (answers that sleep 0.3 s)")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    if not workloads or set(workloads) - {"cpu", "waiting"}:
        parser.error("--workloads takes cpu and/or waiting")
    results = run(args.submissions, args.max_replicas, workloads, args.timeout)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, args.submissions, args.max_replicas)
    print(f"\nresults: {RESULTS}")
    bad = sum(r["wrong_grades"] + r["submit_errors"] for runs in results["bursts"].values() for r in runs.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
