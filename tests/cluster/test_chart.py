"""The Helm chart (charts/xqueue), rendered: lint, schema, and what the real API server says of it.

Every documented option set (the chart README's "Setups" table) must lint strictly, render, pass
server-side validation of the real kube-apiserver (with the Prometheus Operator's real CRDs for the
monitoring objects), and give pods that Pod Security "restricted" admits. Invalid values must be
refused by the schema or the chart's own checks with a message naming the problem.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import ControlPlane
from tests.cluster.operator_harness import ROOT

pytestmark = [pytest.mark.kwok, pytest.mark.timeout(300)]

CHART = ROOT / "charts" / "xqueue"
EXTERNAL_DB = ["--set", "database.existingSecret=xqueue-db"]

# The chart README's setups, by name. Keep the two in step.
OPTION_SETS: dict[str, list[str]] = {
    "defaults (in-chart PostgreSQL)": [],
    "external database Secret": EXTERNAL_DB,
    "database URL in values": ["--set", "database.url=postgresql://xq:pw@db.example.org:5432/xqueue"],
    "HA with S3": [*EXTERNAL_DB, "--set", "server.replicas=3", "--set", "server.storage.type=s3",
                   "--set", "server.storage.s3.bucket=xqueue-files",
                   "--set", "server.storage.s3.credentialsSecret=xqueue-s3"],
    "HA with a shared claim": [*EXTERNAL_DB, "--set", "server.replicas=2",
                               "--set", "server.storage.existingClaim=xqueue-files"],
    "locked down (NetworkPolicies, monitoring)": [
        "--set", "networkPolicy.enabled=true",
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.graderPodMonitor.enabled=true"],
    "operator for some namespaces": [*EXTERNAL_DB, "--set", "operator.watchNamespaces={course-a,course-b}",
                                     "--set", "admin.existingSecret=xqueue-admin"],
    "operator only (external server)": [
        "--set", "server.enabled=false", "--set", "operator.xqueueUrl=https://xqueue.example.org",
        "--set", "admin.existingSecret=xqueue-admin", "--set", "networkPolicy.enabled=true"],
    "server only": [*EXTERNAL_DB, "--set", "operator.enabled=false", "--set", "server.usersSecret=lms-accounts"],
    "LMS outside the cluster (Ingress with TLS)": [
        *EXTERNAL_DB, "--set", "server.ingress.enabled=true", "--set", "server.ingress.host=xqueue.example.org",
        "--set", "server.ingress.tlsSecret=xqueue-tls"],
}

KINDS_WITH_PODS = ("Deployment", "StatefulSet", "Job")
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace")


def render(kube: ControlPlane, namespace: str, *values: str) -> list[dict[str, Any]]:
    out = kube.helm("template", "rel", str(CHART), "--namespace", namespace, *values).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(kube: ControlPlane, *values: str) -> str:
    proc = kube.helm("template", "rel", str(CHART), *values, check=False)
    assert proc.returncode != 0, f"helm template accepted {values}"
    return proc.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    return next(d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix))


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec); a StatefulSet's claim templates become volumes, as in its pods."""
    for doc in docs:
        if doc["kind"] in KINDS_WITH_PODS:
            spec = dict(doc["spec"]["template"]["spec"])
            claims = [{"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": t["metadata"]["name"]}}
                      for t in doc["spec"].get("volumeClaimTemplates", [])]
            spec["volumes"] = [*spec.get("volumes", []), *claims]
            yield doc["metadata"]["name"], spec


@pytest.fixture(scope="module")
def monitoring_crds(kube: ControlPlane) -> None:
    """The Prometheus Operator's ServiceMonitor and PodMonitor CRDs (real schemas, from the Go proxy)."""
    crd_dir = os.environ.get("K8S_TEST_CRD_DIR") or subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-test-crds.sh"), "--print-dir"],
        capture_output=True, text=True, timeout=900, check=True).stdout.strip()
    for name in ("servicemonitors", "podmonitors"):
        kube.kubectl("apply", "--server-side", "-f", str(Path(crd_dir) / f"monitoring.coreos.com_{name}.yaml"))
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}.monitoring.coreos.com", "--timeout=60s")


def test_an_external_database_replaces_the_in_chart_postgresql(kube: ControlPlane) -> None:
    assert by_kind(render(kube, "xq"), "StatefulSet"), "the defaults run their own PostgreSQL"
    for setup in ("external database Secret", "database URL in values"):
        docs = render(kube, "xq", *OPTION_SETS[setup])
        assert not by_kind(docs, "StatefulSet") and not any("postgresql" in d["metadata"]["name"] for d in docs)
        server = named(docs, "Deployment", "-server")["spec"]["template"]["spec"]["containers"][0]
        url = next(e for e in server["env"] if e["name"] == "XQUEUE_DATABASE_URL")["valueFrom"]["secretKeyRef"]
        assert url == ({"name": "xqueue-db", "key": "url"} if "Secret" in setup else {"name": "rel-xqueue-database",
                                                                                        "key": "url"})
    message = render_error(kube, "--set", "postgresql.enabled=false")
    assert "postgresql.enabled=false needs an external database" in message and "database.existingSecret" in message
    assert "not both" in render_error(kube, *EXTERNAL_DB, "--set", "database.url=postgresql://h/db")


@pytest.mark.parametrize("values, expected", [
    (["--set", "server.replicas=-1"], "at '/server/replicas': minimum"),
    (["--set", "server.storage.type=nfs"], "at '/server/storage/type': value must be one of 'local', 's3'"),
    (["--set", "server.sotrage.type=s3"], "additional properties 'sotrage' not allowed"),
    (["--set", "server.port=70000"], "at '/server/port'"),
    (["--set", "operator.image.pullPolicy=Sometimes"], "at '/operator/image/pullPolicy'"),
    (["--set", "operator.watchNamespaces={Not_A_Namespace}"], "at '/operator/watchNamespaces/0'"),
    (["--set", "database.url=mysql://db/xqueue"], "at '/database/url'"),
    (["--set", "metrics.serviceMonitor.interval=often"], "at '/metrics/serviceMonitor/interval'"),
    (["--set", "server.logLevel=LOUD"], "at '/server/logLevel'"),
    (["--set", "server.ingress.enabled=true"], "at '/server/ingress/host': minLength"),
    # The operator's --log-format has no "text" (the schema allowed it; the pod would crash-loop).
    (["--set", "operator.logFormat=text"], "at '/operator/logFormat'"),
])
def test_schema_rejects_invalid_values_with_a_clear_message(kube: ControlPlane, values: list[str],
                                                            expected: str) -> None:
    message = render_error(kube, *values)
    assert "don't meet the specifications of the schema" in message and expected in message, message


@pytest.mark.parametrize("values, expected", [
    ([*EXTERNAL_DB, "--set", "server.replicas=2"], "server.replicas > 1 needs file storage every replica sees"),
    ([*EXTERNAL_DB, "--set", "server.storage.type=s3"], "server.storage.type=s3 needs server.storage.s3.bucket"),
    (["--set", "server.enabled=false"], "set operator.xqueueUrl"),
])
def test_chart_refuses_combinations_that_cannot_work(kube: ControlPlane, values: list[str], expected: str) -> None:
    assert expected in render_error(kube, *values)


@pytest.mark.parametrize("setup", list(OPTION_SETS))
def test_documented_setup_lints_renders_and_passes_server_side_validation(
        kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, monitoring_crds: None, setup: str) -> None:
    values = OPTION_SETS[setup]
    lint = kube.helm("lint", str(CHART), "--strict", "--namespace", kube_namespace, *values)
    assert "0 chart(s) failed" in lint.stdout, lint.stdout
    docs = render(kube, kube_namespace, *values)
    for ns in ("course-a", "course-b"):  # RoleBindings of the namespaced setup live there
        kube.kubectl("create", "namespace", ns, check=False)
    for doc in docs:  # what `helm install -n` does for objects that name no namespace
        if doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"].setdefault("namespace", kube_namespace)
    manifest = "\n---\n".join(json.dumps(d) for d in docs)
    proc = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False)
    assert proc.returncode == 0, proc.stderr
    assert_wiring(docs, values)


def assert_wiring(docs: list[dict[str, Any]], values: list[str]) -> None:
    """What holds in every setup: Secrets the pods read exist (or are the user's), pods are locked down."""
    own_secrets = {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
    users_secrets = {v.split("=", 1)[1] for v in values if "Secret=" in v}  # also usersSecret=
    for name, spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, name
            assert "limits" in container["resources"] and "requests" in container["resources"], name
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert not ref or ref["name"] in own_secrets | users_secrets, (name, ref)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in own_secrets | users_secrets, (name, volume)
    for deployment in by_kind(docs, "Deployment"):
        if deployment["metadata"]["name"].endswith("-operator"):
            assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    servers = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-server")]
    for server in servers:
        init = server["spec"]["template"]["spec"]["initContainers"]
        assert [c["name"] for c in init] == ["migrate"] and "migrate" in init[0]["command"]
        has_pdb = any(d["metadata"]["name"] == server["metadata"]["name"] for d in by_kind(docs, "PodDisruptionBudget"))
        assert has_pdb == (server["spec"]["replicas"] > 1)


def test_in_chart_postgresql_and_the_server_agree_on_the_database(kube: ControlPlane) -> None:
    docs = render(kube, "xq")
    url_text = base64.b64decode(named(docs, "Secret", "-database")["data"]["url"]).decode()
    password = base64.b64decode(named(docs, "Secret", "-postgresql")["data"]["password"]).decode()
    service = named(docs, "Service", "-postgresql")["metadata"]["name"]
    assert url_text == f"postgresql://xqueue:{password}@{service}.xq.svc:5432/xqueue"
    assert len(password) >= 32
    assert named(docs, "Secret", "-postgresql")["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    sts = named(docs, "StatefulSet", "-postgresql")
    env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == named(docs, "Secret", "-postgresql")[
        "metadata"]["name"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"


def test_network_policies_let_exactly_the_chart_pods_reach_postgresql(kube: ControlPlane) -> None:
    docs = render(kube, "xq", *OPTION_SETS["locked down (NetworkPolicies, monitoring)"])
    policies = {d["metadata"]["name"].removeprefix("rel-xqueue-"): d["spec"] for d in by_kind(docs, "NetworkPolicy")}
    assert set(policies) == {"server", "admin-account", "postgresql", "operator"}
    allowed = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for peer in policies["postgresql"]["ingress"][0]["from"]]
    assert sorted(allowed) == ["admin-account", "server"]
    assert policies["postgresql"]["policyTypes"] == ["Ingress", "Egress"] and "egress" not in policies["postgresql"]
    operator_ports = {p["port"] for rule in policies["operator"]["egress"] for p in rule["ports"]}
    assert operator_ports == {53, 443, 6443, 18040}


def test_pods_meet_pod_security_restricted(kube: ControlPlane, kube_namespace: str) -> None:
    kube.kubectl("label", "namespace", kube_namespace, "pod-security.kubernetes.io/enforce=restricted")
    seen = 0
    for setup in ("locked down (NetworkPolicies, monitoring)", "HA with S3"):
        for name, spec in pod_specs(render(kube, kube_namespace, *OPTION_SETS[setup])):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}"},
                   "spec": {**spec, "serviceAccountName": "default"}}
            proc = kube.kubectl("create", "--dry-run=server", "-n", kube_namespace, "-f", "-",
                                input=json.dumps(pod), check=False)
            assert proc.returncode == 0 and "would violate" not in proc.stderr, (name, proc.stderr)
            seen += 1
    assert seen >= 6  # server, operator, postgresql, admin Job (twice over)
