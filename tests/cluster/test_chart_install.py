"""`helm install` into the tier-B control plane, then the chart's own containers run for real.

kwok makes the pods "Ready", so `helm install --wait` behaves as on a cluster; after that
``LocalPod`` runs the containers the chart rendered (its commands, environment and Secrets) as local
processes on 127.0.0.1: the server's migration step against a real PostgreSQL, the server, the
admin-account Job, and the operator with a token of the chart's ServiceAccount (so its RBAC is the
only permission it has). The chart's example CourseGrader is then reconciled by that operator,
provisioned through that server.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from coursegrader_operator import constants as C
from tests.cluster.controlplane import ControlPlane, free_ports
from tests.cluster.local_pods import LocalPod
from tests.cluster.operator_harness import (
    ROOT,
    Rest,
    condition,
    is_ready,
    wait_for,
)
from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import create_database

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.timeout(420)]

CHART = ROOT / "charts" / "xqueue"
EXAMPLE = CHART / "examples" / "coursegrader.yaml"
# (--set turns "0.5" into a string, which the schema refuses for numbers: --set-json keeps it a number.)
FAST = ["--set-json", "operator.scaleInterval=0.5", "--set-json", "operator.statusMinInterval=0.5",
        "--set", "operator.watch.serverTimeout=10", "--set", "operator.watch.clientTimeout=20"]


def secret_value(kube: ControlPlane, namespace: str, name: str, key: str) -> str:
    secret = json.loads(kube.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout)
    return base64.b64decode(secret["data"][key]).decode()


def workload(kube: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(kube.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)
    return result


def stop(proc: subprocess.Popen[str], log: Path) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return log.read_text()


def sa_kubeconfig(kube: ControlPlane, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a token), not as the cluster admin."""
    token = kube.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "sa"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def courses(kube: ControlPlane) -> Iterator[str]:
    name = f"courses-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_install_runs_the_system_and_reconciles_the_example_coursegrader(
        kube: ControlPlane, kube_namespace: str, courses: str, coursegrader_crd: str, rest: Rest,
        postgres: LocalPostgres, tmp_path: Path) -> None:
    release, ns = f"xq{uuid.uuid4().hex[:6]}", kube_namespace
    fullname = f"{release}-xqueue"
    database_url = create_database(postgres.url)
    kube.kubectl("create", "secret", "generic", "xqueue-db", "-n", ns, f"--from-literal=url={database_url}")
    processes: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        install = kube.helm("install", release, str(CHART), "-n", ns, "--set", "database.existingSecret=xqueue-db",
                            "--set", f"operator.watchNamespaces={{{courses}}}", *FAST,
                            "--wait", "--wait-for-jobs", "--timeout", "120s")
        assert "XQueue server:" in install.stdout and "Add a course" in install.stdout  # NOTES.txt
        for name in (f"{fullname}-server", f"{fullname}-operator"):
            status = workload(kube, ns, "deployment", name)["status"]
            assert status.get("availableReplicas") == 1, (name, status)
        assert_least_privilege(kube, ns, f"{fullname}-operator", courses)
        admin_password = secret_value(kube, ns, f"{fullname}-admin", "password")
        assert len(admin_password) >= 32

        # --- the server pod: its migration step, then the server, exactly as rendered.
        server_pod = LocalPod(kube, ns, workload(kube, ns, "deployment", f"{fullname}-server")["spec"]["template"]
                              ["spec"], tmp_path / "server")
        migrate = server_pod.run("migrate", init=True)
        assert migrate.returncode == 0 and "schema version:" in migrate.stdout, migrate.stdout
        server_port, liveness_port = free_ports(2)
        server_log = tmp_path / "server.log"
        processes.append((server_pod.popen("server", overrides={"XQUEUE_HOST": "127.0.0.1",
                                                                "XQUEUE_PORT": str(server_port)}, log=server_log),
                          server_log))
        server_url = f"http://127.0.0.1:{server_port}"
        http = requests.Session()
        http.trust_env = False
        wait_for(lambda: _ok(http, f"{server_url}/readyz"), timeout=60, what="the chart's server ready")

        # --- the admin-account hook Job (helm deleted it after kwok "completed" it; its manifest stays).
        hooks = [d for d in yaml.safe_load_all(kube.helm("get", "hooks", release, "-n", ns).stdout) if d]
        admin_job = next(d for d in hooks if d["metadata"]["name"] == f"{fullname}-admin-account")
        job_pod = LocalPod(kube, ns, admin_job["spec"]["template"]["spec"], tmp_path / "admin-job")
        created = job_pod.run("create-admin")
        assert created.returncode == 0, created.stdout
        assert admin_password not in created.stdout
        queues = http.get(f"{server_url}/api/v1/queues", auth=("coursegrader-operator", admin_password), timeout=10)
        assert queues.status_code == 200, queues.text

        # --- `helm test`: kwok "runs" the test Job; its command runs here against the real server.
        assert "Phase:          Succeeded" in kube.helm("test", release, "-n", ns, "--timeout", "60s").stdout
        test_job = next(d for d in hooks if d["metadata"]["name"] == f"{fullname}-test-server")
        service_url = f"http://{fullname}-server.{ns}.svc:18040"
        probe = LocalPod(kube, ns, test_job["spec"]["template"]["spec"], tmp_path / "helm-test").run(
            "readyz", addresses={service_url: server_url})
        assert probe.returncode == 0 and "/readyz 200" in probe.stdout, probe.stdout

        # --- the operator pod, with the chart's ServiceAccount and nothing else.
        operator_pod = LocalPod(kube, ns, workload(kube, ns, "deployment", f"{fullname}-operator")["spec"]
                                ["template"]["spec"], tmp_path / "operator")
        kubeconfig = sa_kubeconfig(kube, ns, f"{fullname}-operator", tmp_path / "operator.kubeconfig")
        operator_log = tmp_path / "operator.log"
        processes.append((operator_pod.popen("operator", log=operator_log, overrides={
            "KUBECONFIG": str(kubeconfig),
            # The operator dials the server here; graders keep the Service URL the chart set.
            "XQOP_XQUEUE_URL_OVERRIDE": server_url,
            "XQOP_LIVENESS": f"http://127.0.0.1:{liveness_port}/healthz"}), operator_log))

        # --- the chart's example CourseGrader, in the watched namespace.
        example = yaml.safe_load(EXAMPLE.read_text())
        example["metadata"]["namespace"] = courses
        kube.kubectl("apply", "-f", "-", input=json.dumps(example))
        name, queue = example["metadata"]["name"], example["spec"]["queue"]
        cg = wait_for(lambda: (c := rest.get(C.KIND, courses, name)) and is_ready(c) and c, timeout=90,
                      what=f"example CourseGrader Ready (operator log: {operator_log})")
        assert condition(cg, C.COND_RECONCILED)["status"] == "True"
        deployment = rest.get("Deployment", courses, f"{name}-grader")
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "ghcr.io/xqueue-k8s/xqueue-grader:0.1.0"  # the chart's default
        config = rest.get("ConfigMap", courses, f"{name}-grader-config")
        # Graders reach the server through the chart's Service, whatever address the operator dialled.
        assert config and config["data"]["XQGRADER_SERVER_URL"] == f"http://{fullname}-server.{ns}.svc:18040"
        listed = http.get(f"{server_url}/api/v1/queues", auth=("coursegrader-operator", admin_password), timeout=10)
        assert queue in json.dumps(listed.json()), listed.text  # provisioned through the admin API
        table = kube.kubectl("get", "coursegraders", "-n", courses).stdout
        assert queue in table and "Ready" in table

        # --- upgrade: generated passwords survive, the operator's Deployment rolls with the new value.
        kube.helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values", "--set", "operator.workers=8",
                  "--wait", "--wait-for-jobs", "--timeout", "120s")
        assert secret_value(kube, ns, f"{fullname}-admin", "password") == admin_password
        operator = workload(kube, ns, "deployment", f"{fullname}-operator")["spec"]["template"]["spec"]
        assert {"name": "XQOP_WORKERS", "value": "8"} in operator["containers"][0]["env"]
    finally:
        logs = {str(log): stop(proc, log) for proc, log in processes}
        kube.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "60s", check=False)
    for log, text in logs.items():
        assert "Traceback" not in text and "Forbidden" not in text, f"{log}:\n{text[-5000:]}"
    # Uninstall removes the release's objects; the CRD and the course's CourseGrader stay.
    assert kube.kubectl("get", "deployment", f"{fullname}-server", "-n", ns, check=False).returncode != 0
    assert kube.kubectl("get", "crd", coursegrader_crd).returncode == 0
    assert rest.get(C.KIND, courses, name) is not None


def assert_least_privilege(kube: ControlPlane, namespace: str, service_account: str, courses: str) -> None:
    """The operator's RBAC: what it manages, in the namespaces it watches, and not more."""
    identity = f"system:serviceaccount:{namespace}:{service_account}"

    def can(verb: str, resource: str, ns: str | None = None) -> bool:
        resource, _, sub = resource.partition("/")
        args = ["auth", "can-i", verb, resource, "--as", identity]
        args += ["--subresource", sub] if sub else []
        args += ["-n", ns] if ns else ["--all-namespaces"]
        return kube.kubectl(*args, check=False).stdout.strip() == "yes"

    assert can("patch", "deployments", courses) and can("patch", "coursegraders/status", courses)
    assert can("create", "events", courses) and can("create", "networkpolicies", courses)
    assert not can("patch", "deployments", "kube-system")  # only the watched namespaces
    assert not can("get", "secrets", namespace)  # not even the release's own Secrets
    assert not can("delete", "nodes") and not can("create", "pods", courses)
    # pod-deletion-cost before a scale-down: list and patch grader pods, nothing more.
    assert can("list", "pods", courses) and can("patch", "pods", courses)
    assert not can("delete", "pods", courses)
    assert not can("patch", "coursegraders", courses)  # the spec belongs to course ops


def _ok(http: requests.Session, url: str) -> bool:
    try:
        return http.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_install_with_in_chart_postgresql_keeps_its_password(kube: ControlPlane, kube_namespace: str) -> None:
    release, ns = f"xq{uuid.uuid4().hex[:6]}", kube_namespace
    fullname = f"{release}-xqueue"
    try:
        kube.helm("install", release, str(CHART), "-n", ns, "--set", "postgresql.persistence.enabled=false",
                  "--set", "operator.enabled=false",
                  "--wait", "--wait-for-jobs", "--timeout", "120s")
        sts = workload(kube, ns, "statefulset", f"{fullname}-postgresql")
        assert sts["status"].get("readyReplicas") == 1
        password = secret_value(kube, ns, f"{fullname}-postgresql", "password")
        url = secret_value(kube, ns, f"{fullname}-database", "url")
        assert url == f"postgresql://xqueue:{password}@{fullname}-postgresql.{ns}.svc:5432/xqueue"
        kube.helm("upgrade", release, str(CHART), "-n", ns, "--reuse-values", "--set", "server.logLevel=DEBUG",
                  "--wait", "--timeout", "120s")
        assert secret_value(kube, ns, f"{fullname}-postgresql", "password") == password
        assert secret_value(kube, ns, f"{fullname}-database", "url") == url
    finally:
        kube.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "60s", check=False)
    # The data outlives the release (helm.sh/resource-policy: keep), so a reinstall can open it.
    assert secret_value(kube, ns, f"{fullname}-postgresql", "password") == password
