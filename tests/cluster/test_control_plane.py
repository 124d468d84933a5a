"""Smoke tests proving the control plane works: real apiserver, kwok-backed workloads, kubectl, helm."""

from __future__ import annotations

import json
import time
import uuid

import kubernetes.client

from tests.cluster.controlplane import ControlPlane


def test_apiserver_reports_v1_36(kube: ControlPlane) -> None:
    with kube.api_client() as client:
        info = kubernetes.client.VersionApi(client).get_code()
    # The version stamp (ldflags) matters: helm's kubeVersion gates and kubectl's skew check read it.
    assert info.git_version.startswith("v1.36."), info
    assert (info.major, info.minor) == ("1", "36")
    assert kube.server.startswith("https://127.0.0.1:")


def test_kubectl_talks_to_the_control_plane(kube: ControlPlane, kube_namespace: str) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]
    kube.kubectl("create", "configmap", "smoke", "-n", kube_namespace, "--from-literal=k=v")
    out = kube.kubectl("get", "configmap", "smoke", "-n", kube_namespace, "-o", "jsonpath={.data.k}")
    assert out.stdout == "v"
    # The ServiceAccount signing key works (TokenRequest) and RBAC answers impersonated checks.
    token = kube.kubectl("create", "token", "default", "-n", kube_namespace, "--duration=10m").stdout
    assert token.count(".") == 2, token  # a JWT
    can = kube.kubectl("auth", "can-i", "list", "pods", "-n", kube_namespace,
                       f"--as=system:serviceaccount:{kube_namespace}:default", check=False)
    assert can.stdout.strip() == "no", can
    # The fake node is Ready (kwok) and schedulable (node-lifecycle removed the not-ready taint).
    node = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"][0]
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"


def test_deployment_becomes_ready_through_kwok(kube: ControlPlane, kube_namespace: str) -> None:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                # Never pulled or run: kwok only fakes the pod status.
                "spec": {"containers": [{"name": "c", "image": "registry.invalid/never-pulled:1"}]},
            },
        },
    }
    with kube.api_client() as client:
        apps = kubernetes.client.AppsV1Api(client)
        # The generated signature names the model class; the client serializes a plain manifest as well.
        apps.create_namespaced_deployment(kube_namespace, deployment)  # type: ignore[arg-type]
        # Deployment -> ReplicaSet (controller-manager) -> Pods -> bound (scheduler) -> Running/Ready
        # (kwok) -> status.readyReplicas (controller-manager). Poll with a deadline, no fixed sleep.
        deadline = time.monotonic() + 60
        status = None
        for _ in range(600):
            status = apps.read_namespaced_deployment_status(name, kube_namespace).status
            assert status is not None, "a Deployment read back from the API server has a status"
            if status.ready_replicas == 2 and status.available_replicas == 2:
                break
            assert time.monotonic() < deadline, f"deployment not ready after 60 s: {status}"
            time.sleep(0.2)
        else:
            raise AssertionError(f"deployment not ready: {status}")
        pods = kubernetes.client.CoreV1Api(client).list_namespaced_pod(
            kube_namespace, label_selector=f"app={name}").items
    assert len(pods) == 2
    # The generated models make every field optional; a pod read from the API server has status and spec.
    assert all(p.status.phase == "Running" and p.spec.node_name for p in pods)  # type: ignore[union-attr]


def test_helm_binary_runs(kube: ControlPlane, kube_namespace: str) -> None:
    version = kube.helm("version", "--short").stdout
    assert version.startswith("v4."), version
    # Helm 4 derives its default KubeVersion from the client-go it links (1.36), not 1.20 as Helm 3
    # installed with `go install` would; charts with a kubeVersion constraint depend on that.
    kube_version = kube.helm("template", "x", _minimal_chart(kube), "--show-only", "templates/cm.yaml").stdout
    assert 'kube: "v1.36.' in kube_version, kube_version
    # And it reaches the apiserver through the kubeconfig.
    assert kube.helm("list", "-n", kube_namespace, "-q").stdout.strip() == ""


def _minimal_chart(kube: ControlPlane) -> str:
    chart = kube.work_dir / "smoke-chart"
    (chart / "templates").mkdir(parents=True, exist_ok=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: smoke\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: smoke\n"
        "data:\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n")
    return str(chart)
