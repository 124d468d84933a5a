"""The Helm chart (charts/xqueue): lints, renders objects the real API server accepts, installs on
the kwok cluster, and its RBAC is enough for the real operator to do its job (and not much more)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from coursegrader_operator import constants as C
from tests.cluster.controlplane import ControlPlane
from tests.cluster.test_operator_harness import (  # noqa: F401 - the *_fixture names are fixtures
    ROOT,
    Rest,
    condition,
    coursegrader_crd_fixture,
    coursegrader_manifest,
    is_ready,
    operator_env_fixture,
    rest_fixture,
    running_operator,
    secret_manifest,
    wait_for,
)

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.timeout(300)]

CHART = ROOT / "charts" / "xqueue"
BASE_VALUES = ["--set", "server.database.existingSecret=xqueue-db", "--set", "admin.existingSecret=xqueue-admin"]


def helm(kube: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(kube.bin_dir / "helm"), "--kubeconfig", str(kube.kubeconfig), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def rendered(kube: ControlPlane, *extra: str, namespace: str = "xqueue") -> list[dict[str, Any]]:
    out = helm(kube, "template", "rel", str(CHART), "--namespace", namespace, *BASE_VALUES, *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_chart_lints_and_requires_a_database(kube: ControlPlane) -> None:
    lint = helm(kube, "lint", str(CHART), "--strict", *BASE_VALUES)
    assert "0 chart(s) failed" in lint.stdout
    missing = helm(kube, "template", "rel", str(CHART), check=False)
    assert missing.returncode != 0 and "server.database.existingSecret is required" in missing.stderr


def test_rendered_objects_pass_server_side_validation(kube: ControlPlane, kube_namespace: str,
                                                     coursegrader_crd: str) -> None:
    docs = rendered(kube, "--set", f"operator.watchNamespaces={{{kube_namespace}}}", namespace=kube_namespace)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Job", "PodDisruptionBudget",
                     "RoleBinding", "Service", "ServiceAccount"], kinds
    manifest = "\n---\n".join(json.dumps(d) for d in docs)
    proc = kube.kubectl("apply", "--dry-run=server", "-n", kube_namespace, "-f", "-", input=manifest,
                        check=False)
    assert proc.returncode == 0, proc.stderr
    operator = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator"))
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["XQOP_NAMESPACES"] == kube_namespace
    assert env["XQOP_XQUEUE_URL"] == f"http://rel-xqueue-server.{kube_namespace}.svc:18040"
    assert env["XQOP_ADMIN_PASSWORD_FILE"] and "XQOP_ADMIN_PASSWORD" not in env


def test_pods_meet_pod_security_restricted(kube: ControlPlane, kube_namespace: str) -> None:
    kube.kubectl("label", "namespace", kube_namespace, "pod-security.kubernetes.io/enforce=restricted")
    for doc in rendered(kube, namespace=kube_namespace):
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}"},
               "spec": {**doc["spec"]["template"]["spec"], "serviceAccountName": "default"}}
        proc = kube.kubectl("create", "--dry-run=server", "-n", kube_namespace, "-f", "-",
                            input=json.dumps(pod), check=False)
        assert proc.returncode == 0 and "would violate" not in proc.stderr, (doc["metadata"]["name"], proc.stderr)


def test_install_and_operator_works_with_exactly_the_charts_rbac(
        kube: ControlPlane, kube_namespace: str, rest: Rest, operator_env: dict[str, str],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release_ns = kube_namespace
    courses = f"courses-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", courses)
    release = f"xq{uuid.uuid4().hex[:6]}"
    try:
        rest.create("Secret", release_ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "xqueue-db"},
                                           "stringData": {"url": "postgresql://x:y@db.invalid:5432/xqueue"}})
        rest.create("Secret", release_ns, {"apiVersion": "v1", "kind": "Secret",
                                           "metadata": {"name": "xqueue-admin"},
                                           "stringData": {"password": "admin-password"}})
        # --wait: the fake pods become Ready through kwok; the admin Job's pod "completes" (kwok).
        helm(kube, "install", release, str(CHART), "--namespace", release_ns, *BASE_VALUES,
             "--set", f"operator.watchNamespaces={{{courses}}}", "--wait", "--wait-for-jobs", "--timeout", "120s")
        sa = f"{release}-xqueue-operator"
        identity = f"system:serviceaccount:{release_ns}:{sa}"

        def can(verb: str, resource: str, ns: str | None = None) -> bool:
            resource, _, sub = resource.partition("/")
            args = ["auth", "can-i", verb, resource, "--as", identity]
            args += ["--subresource", sub] if sub else []
            args += ["-n", ns] if ns else ["--all-namespaces"]
            return kube.kubectl(*args, check=False).stdout.strip() == "yes"

        assert can("patch", "deployments", courses) and can("patch", "coursegraders/status", courses)
        assert can("create", "events", courses)
        assert not can("patch", "deployments", "kube-system")  # namespaced mode: only watched namespaces
        assert not can("delete", "nodes") and not can("create", "pods", courses)
        # pod-deletion-cost before a scale-down: list and patch grader pods, nothing more.
        assert can("list", "pods", courses) and can("patch", "pods", courses)
        assert not can("delete", "pods", courses) and not can("patch", "pods", "kube-system")
        assert not can("patch", "coursegraders", courses)  # spec belongs to course ops

        # Run the real operator in-process with the chart's ServiceAccount token, not the admin cert.
        token = kube.kubectl("create", "token", sa, "-n", release_ns, "--duration=1h").stdout.strip()
        config = yaml.safe_load(kube.kubeconfig.read_text())
        config["users"] = [{"name": "operator", "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = "operator"
        kubeconfig = tmp_path / "operator.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        rest.create("Secret", courses, secret_manifest("grader-login", "grader", "pw-12345678"))
        with running_operator(courses) as runner:
            rest.create(C.KIND, courses, coursegrader_manifest("rbac-check"))
            cg = wait_for(lambda: (c := rest.get(C.KIND, courses, "rbac-check")) and is_ready(c) and c,
                          timeout=60, what="CourseGrader Ready under the chart's RBAC")
            assert condition(cg, C.COND_RECONCILED)["status"] == "True"
            wait_for(lambda: rest.events(courses, "rbac-check"), timeout=15, what="events posted")
        assert "Forbidden" not in runner.output
    finally:
        helm(kube, "uninstall", release, "--namespace", release_ns, "--wait", "--timeout", "60s", check=False)
        kube.kubectl("delete", "namespace", courses, "--wait=false", "--ignore-not-found", check=False)
