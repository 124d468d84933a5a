"""The whole system on the real node, set up for the scaling, fault and network tests.

`installed_release()` wraps tests.node.chart.install_system (the chart with the node's local images,
two server replicas, in-chart PostgreSQL, the operator, the in-cluster LMS) with what these tests
need on top: a namespace of their own that lives for a whole test module, a short submission lease,
optionally the chart's NetworkPolicies, and the demo course removed again once the install is
proven (each test applies its own CourseGrader; the node has 2 CPUs).
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

from tests.node.chart import GRADER_DEMO_IMAGE, install_system
from tests.node.faults import Release
from tests.node.podops import wait_for


def release_helm_args(*, lease_seconds: float | None, network_policy: bool) -> list[str]:
    args: list[str] = []
    if lease_seconds is not None:
        args += ["--set", "server.extraEnv[0].name=XQUEUE_LEASE_SECONDS",
                 "--set-string", f"server.extraEnv[0].value={lease_seconds:g}"]
    if network_policy:
        # CoreDNS runs on the node's host, not as a pod: the graders' DNS rule must not be narrowed
        # to DNS pods (unset podLabels: "port 53, any address"), as on clusters with node-local DNS.
        args += ["--set", "networkPolicy.enabled=true", "--set", "clusterDNS.podLabels.k8s-app=null"]
    return args


@contextlib.contextmanager
def restricted_namespace(cluster: Any, prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest")
        wait_for(f"ServiceAccount default in {name}", lambda: cluster.kubectl(
            "get", "serviceaccount", "default", "-n", name, check=False).returncode == 0, 30, interval=0.2)
        yield name
    finally:
        try:
            cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=120s", timeout=130)
        except (subprocess.SubprocessError, OSError) as exc:  # never mask the tests' own outcome
            print(f"warning: could not delete namespace {name}: {exc}")


@contextlib.contextmanager
def installed_release(cluster: Any, *, lease_seconds: float | None = None,
                      network_policy: bool = False) -> Iterator[Release]:
    with restricted_namespace(cluster, "xq-sys") as namespace, install_system(
            cluster, namespace, helm_args=release_helm_args(lease_seconds=lease_seconds,
                                                            network_policy=network_policy)) as system:
        release = Release(cluster=cluster, namespace=namespace, fullname=system.fullname,
                          grader_image=cluster.images[GRADER_DEMO_IMAGE],
                          lease_seconds=lease_seconds if lease_seconds is not None else 60.0,
                          lms_url=system.lms_url)
        release.delete_coursegrader(system.coursegrader)
        yield release
