"""The Tutor plugin's Kubernetes objects and the watcher import's CourseGraders on a real kube-apiserver.

The plugin is rendered by the real Tutor and built by `kubectl kustomize` exactly as `tutor k8s start`
does; its objects are then created for real (namespaced ones in the test namespace, cluster-scoped
RBAC under namespace-derived names, the CRD server-side dry-run because the session already has it),
their pods must be admitted under Pod Security "restricted", and the operator's ServiceAccount must
have the rights it needs and no more.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from coursegrader_operator.watcher_import import JAILED, ImportOptions, convert
from tests.cluster.controlplane import ControlPlane
from tests.tutor.tutor_env import render

CRD_NAME = "coursegraders.grading.xqueue-k8s.io"
CLUSTER_KINDS = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def ours(obj: dict[str, Any]) -> bool:
    return obj["metadata"]["name"].startswith("xqueue-") or obj["metadata"]["name"] == CRD_NAME


@pytest.fixture
def plugin_objects(kube: ControlPlane, kube_namespace: str, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    root = render(tmp_path / "tutor", {"K8S_NAMESPACE": kube_namespace})
    built = kube.kubectl("kustomize", str(root / "env"), timeout=120).stdout
    objects = [o for o in yaml.safe_load_all(built) if o and ours(o)]
    yield objects
    for obj in objects:
        if obj["kind"] in {"ClusterRole", "ClusterRoleBinding"}:
            kube.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)


def apply_all(kube: ControlPlane, objects: list[dict[str, Any]]) -> dict[str, str]:
    """Create every object; {kind/name: stderr} so warnings can be checked."""
    out: dict[str, str] = {}
    for obj in objects:
        key = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "CustomResourceDefinition":
            args = ["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-"]
        else:
            args = ["create", "-f", "-"]
        proc = kube.kubectl(*args, input=json.dumps(obj), check=False)
        assert proc.returncode == 0, (key, proc.stderr)
        out[key] = proc.stderr
    return out


def test_plugin_objects_are_accepted_and_restricted(
        kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, plugin_objects: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in plugin_objects)
    assert kinds == sorted([
        f"CustomResourceDefinition/{CRD_NAME}",
        f"ClusterRole/xqueue-operator-{kube_namespace}", f"ClusterRole/xqueue-operator-workloads-{kube_namespace}",
        f"ClusterRoleBinding/xqueue-operator-{kube_namespace}",
        "RoleBinding/xqueue-operator-workloads", "ServiceAccount/xqueue-operator", "Secret/xqueue-k8s",
        "Service/xqueue-server", "Service/xqueue-postgresql",
        "PersistentVolumeClaim/xqueue-server-files", "PersistentVolumeClaim/xqueue-postgresql",
        "Deployment/xqueue-server", "Deployment/xqueue-postgresql", "Deployment/xqueue-operator",
        "Job/xqueue-server-job",
    ]), kinds
    for obj in plugin_objects:
        if obj["kind"] not in CLUSTER_KINDS:
            assert obj["metadata"]["namespace"] == kube_namespace, obj["metadata"]

    kube.kubectl("label", "namespace", kube_namespace, "pod-security.kubernetes.io/enforce=restricted")
    warnings = apply_all(kube, plugin_objects)
    for key, stderr in warnings.items():
        assert "would violate PodSecurity" not in stderr, (key, stderr)
    for kind, name in (("deployment", "xqueue-server"), ("deployment", "xqueue-operator"),
                       ("service", "xqueue-server"), ("job", "xqueue-server-job"), ("secret", "xqueue-k8s")):
        kube.kubectl("get", kind, name, "-n", kube_namespace)

    # The pods themselves, as their controllers would create them, pass "restricted" admission.
    for obj in plugin_objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}", "namespace": kube_namespace},
               "spec": obj["spec"]["template"]["spec"]}
        proc = kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        assert proc.returncode == 0 and "would violate" not in proc.stderr, (obj["metadata"]["name"], proc.stderr)


def can_i(kube: ControlPlane, namespace: str, verb: str, resource: str, *args: str) -> bool:
    resource, _, subresource = resource.partition("/")
    extra = [f"--subresource={subresource}"] if subresource else []
    proc = kube.kubectl("auth", "can-i", verb, resource, *extra, *args,
                        f"--as=system:serviceaccount:{namespace}:xqueue-operator", check=False)
    return proc.stdout.strip() == "yes"


def test_operator_rbac_covers_its_work_in_the_openedx_namespace_only(
        kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, plugin_objects: list[dict[str, Any]]) -> None:
    apply_all(kube, plugin_objects)
    ns = ["-n", kube_namespace]
    for verb, resource in (("watch", "coursegraders.grading.xqueue-k8s.io"),
                           ("patch", "coursegraders.grading.xqueue-k8s.io/status"),
                           ("create", "deployments.apps"), ("delete", "deployments.apps"),
                           ("create", "secrets"), ("create", "networkpolicies.networking.k8s.io"),
                           ("patch", "pods"), ("create", "events")):
        assert can_i(kube, kube_namespace, verb, resource, *ns), (verb, resource)
    assert can_i(kube, kube_namespace, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(kube, kube_namespace, "create", "deployments.apps", "-n", "default")
    assert not can_i(kube, kube_namespace, "get", "secrets", "-n", "kube-system")
    assert not can_i(kube, kube_namespace, "create", "pods", *ns)
    assert not can_i(kube, kube_namespace, "delete", "pods", *ns)


def test_watcher_import_output_is_accepted_by_the_crd(kube: ControlPlane, kube_namespace: str,
                                                      coursegrader_crd: str) -> None:
    files = {"600.json": {
        "MITx-6.00x": {"SERVER_REF": "default", "CONNECTIONS": 10,
                       "HANDLERS": [{"HANDLER": JAILED, "KWARGS": {"grader_root": "/edx/data/6.00x/graders"},
                                     "CODEJAIL": {"limits": {"CPU": 2, "REALTIME": 45, "VMEM": 536870912}}}]},
        "test_queue:b": {"SERVER": "http://xq", "AUTH": ["u", "p"],
                         "HANDLERS": [{"HANDLER": JAILED, "KWARGS": {"grader_root": "/edx/data"}}]}}}
    result = convert(files, ImportOptions(repo_url="https://git.example.org/c.git", repo_ref="main",
                                          repo_root="/edx/data", namespace=kube_namespace),
                     servers={"default": {"SERVER": "http://xq", "AUTH": ["watcher", "pw"]}})
    assert len(result.converted) == 2 and not result.unmapped
    for item in result.converted:
        proc = kube.kubectl("create", "-f", "-", input=json.dumps(item.obj), check=False)
        assert proc.returncode == 0, proc.stderr
        stored = json.loads(kube.kubectl("get", "coursegraders", item.obj["metadata"]["name"], "-n", kube_namespace,
                                         "-o", "json").stdout)
        assert stored["spec"]["queue"] == item.queue
        # The API server filled in the CRD's defaults around what the import set.
        assert stored["spec"]["scaling"]["scaleDownWindowSeconds"] == 120
