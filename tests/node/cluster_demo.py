"""``make cluster-demo`` (scripts/cluster-demo.sh): the whole system in Kubernetes on this machine.

Starts the local control plane with its real node (``tests.node.realnode``: containerd, kubelet,
kube-proxy, CoreDNS; the images built by ``scripts/build-images.sh``), installs the Helm chart into
namespace ``xqueue`` as release ``xqueue`` (two server replicas, in-chart PostgreSQL, the operator),
applies the demo CourseGrader and the in-cluster LMS (examples/node/), lets the LMS submit the
correct, incorrect and broken answers of ``make run``, and prints their grades and ``kubectl get
coursegraders``. Then it keeps running, printing how to reach the cluster with kubectl and every
further grade the LMS receives, until Ctrl-C; on exit the node and the control plane are torn down
(nothing stays on the machine).

It lives next to realnode.py and chart.py, which it composes: the same code the tier-C tests run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from tests.node.chart import (
    DEMO_GRADES,
    InstalledSystem,
    demo_submissions,
    grade_of,
    install_system,
)
from tests.node.realnode import RealNode, load_image_manifest
from xqueue_server.demo import readable

NAMESPACE = "xqueue"
RELEASE = "xqueue"  # contains the chart's name: objects are xqueue-server, xqueue-operator, ...


def _stop(signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C


def print_grade(record: dict[str, Any]) -> None:
    grade = grade_of(record)
    if grade is None:
        print(f"  [{record['label']}] no grade received{': ' + record['error'] if record.get('error') else ''}")
        return
    callback = record["callbacks"][0]
    print(f"  [{record['label']}] score={grade[1]} correct={grade[0]}   "
          f"({record['latency_seconds']:.2f} s from submit to the LMS's callback)")
    print(readable(str(callback.get("msg", ""))))


def create_namespace(node: RealNode) -> None:
    node.kubectl("apply", "-f", "-", input=(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n  labels:\n"
        "    pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/enforce-version: latest\n"))
    deadline = time.monotonic() + 30
    while node.kubectl("get", "serviceaccount", "default", "-n", NAMESPACE, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ServiceAccount default never appeared in namespace {NAMESPACE}")
        time.sleep(0.2)


def how_to_reach(node: RealNode, system: InstalledSystem) -> str:
    kubectl = node.bin_dir / "kubectl"
    example = json.dumps({"submissions": [{"label": "mine", "problem": "square", "code": "def square(x): return x*x"}]})
    return f"""
The cluster keeps running. From another shell (as root: the kubeconfig is root's):
  export KUBECONFIG={node.kubeconfig}
  {kubectl} get pods -n {NAMESPACE} -o wide
  {kubectl} get coursegraders -n {NAMESPACE}
  {kubectl} -n {NAMESPACE} logs deployment/{system.fullname}-operator
Submit as the LMS (the LMS pod submits to XQueue; its grades are printed here):
  curl -s {system.lms_url}/simulator/submit -H 'Content-Type: application/json' -d '{example}'
  curl -s {system.lms_url}/simulator/results
Ctrl-C stops and removes everything (control plane, node, pods, images in the node's containerd).
"""


def follow(system: InstalledSystem, shown: set[str]) -> None:
    """Print each grade the LMS receives from now on, until Ctrl-C."""
    failures = 0
    while True:
        time.sleep(1)
        try:
            results = system.results()
            failures = 0
        except OSError as exc:
            failures += 1
            if failures in (5, 60):
                print(f"  (the LMS is not answering through port-forward: {exc})", flush=True)
            continue
        for key, record in results.items():
            if key not in shown and record["callbacks"]:
                shown.add(key)
                print_grade(record)
                sys.stdout.flush()


def run(once: bool) -> int:
    started = time.monotonic()
    node = RealNode(load_image_manifest())
    try:
        print("starting the control plane and the node (containerd, kubelet, kube-proxy, CoreDNS) ...", flush=True)
        node.start()
        waited = node.timings.get("lock-wait", 0.0)
        print(f"  up in {time.monotonic() - started - waited:.1f} s"
              + (f" (after {waited:.0f} s waiting for another node run to finish)" if waited >= 1 else ""))
        create_namespace(node)
        print(f"helm install {RELEASE} charts/xqueue -n {NAMESPACE} -f examples/node/values.yaml (local images) "
              "and kubectl apply the demo CourseGrader and the LMS ...", flush=True)
        with install_system(node, NAMESPACE, release=RELEASE, queue="demo-course", keep=True) as system:
            marks = system.marks
            print(f"  installed in {marks['helm_install_done'] - marks['helm_install_started']:.1f} s; "
                  f"course Ready {marks['coursegrader_ready'] - marks['coursegrader_applied']:.1f} s after apply")
            print(node.kubectl("get", "pods", "-n", NAMESPACE).stdout)
            submitted = system.submit(demo_submissions())
            print(f"the LMS submitted {len(submitted)} answers to queue {system.queue} the way edx-platform does; "
                  "waiting for the grades ...\n", flush=True)
            records = system.wait_for_grades([s["key"] for s in submitted], timeout=240)
            shown = set(records)
            ordered = sorted(records.values(), key=lambda r: r["submitted_at"])
            for record in ordered:
                print_grade(record)
            print(f"$ kubectl get coursegraders -n {NAMESPACE}\n{system.coursegraders_table()}")
            wrong = [r["label"] for r in ordered if grade_of(r) != DEMO_GRADES.get(r["label"])]
            if wrong:
                print(f"demo FAILED: unexpected grades for {', '.join(wrong)}", file=sys.stderr)
                return 1
            elapsed = time.monotonic() - started - node.timings.get("lock-wait", 0.0)
            print(f"demo passed: three answers graded by grader pods {elapsed:.0f} s after a cold start")
            if once:
                return 0
            print(how_to_reach(node, system), flush=True)
            try:
                follow(system, shown)
            except KeyboardInterrupt:
                print("\nstopping ...", flush=True)
            return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping ...", flush=True)
        return 130
    finally:
        node.stop()
        problems = node.teardown_problems + node.leftovers
        print(f"torn down in {node.timings.get('teardown', 0):.1f} s"
              + (f"; problems: {problems}" if problems else "; nothing left on the machine"), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.node.cluster_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit (and tear down) after printing the grades")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    os.chdir(Path(__file__).resolve().parents[2])
    raise SystemExit(run(args.once))


if __name__ == "__main__":
    main()
