"""The Tutor plugin, rendered by the real Tutor: k8s manifests, compose services, LMS settings, init task.

The init task is run for real (xqueue-admin against PostgreSQL) and the real server then accepts the
LMS credentials the rendered LMS settings hold. Server-side validation of the k8s objects is in
tests/cluster/test_tutor_plugin.py.
"""

from __future__ import annotations

import filecmp
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.tutor.tutor_env import (
    BIN,
    PLUGIN,
    PLUGIN_DIR,
    ROOT,
    compose,
    config,
    find,
    init_tasks,
    k8s_objects,
    render,
    settings_value,
)
from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import create_database

CHART_VALUES = yaml.safe_load((ROOT / "charts" / "xqueue" / "values.yaml").read_text())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("tutor") / "root", {"K8S_NAMESPACE": "edx-prod"})


def containers(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in [*pod.get("initContainers", []), *pod["containers"]]}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_lms_and_cms_settings_point_at_the_server_with_the_lms_account(rendered: Path) -> None:
    cfg = config(rendered)
    settings = rendered / "env" / "apps" / "openedx" / "settings"
    for path in (settings / "lms" / "production.py", settings / "lms" / "development.py",
                 settings / "cms" / "production.py"):
        interface = settings_value(path, "XQUEUE_INTERFACE")
        assert interface == {
            "url": "http://xqueue-server:18040",
            "django_auth": {"username": "lms", "password": cfg["XQUEUE_K8S_LMS_PASSWORD"]},
            "basic_auth": None,
            "callback_url": "http://lms:8000",
        }, path
    assert len(cfg["XQUEUE_K8S_LMS_PASSWORD"]) >= 20   # generated once, kept in config.yml


def test_k8s_manifests_deploy_server_postgresql_operator_and_crd(rendered: Path) -> None:
    objects = k8s_objects(rendered)
    kustomization = yaml.safe_load((rendered / "env" / "kustomization.yml").read_text())
    for resource in ("plugins/xqueue-k8s/k8s/crd.yml", "plugins/xqueue-k8s/k8s/rbac.yml",
                     "plugins/xqueue-k8s/k8s/secrets.yml"):
        assert resource in kustomization["resources"]

    # The Service the LMS settings name, on the port they name, selecting the server pods.
    service = find(objects, "Service", "xqueue-server")
    server = find(objects, "Deployment", "xqueue-server")
    assert service["spec"]["ports"][0]["port"] == 18040
    assert service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    server_containers = containers(server)
    assert server_containers["xqueue-server"]["image"] == "ghcr.io/xqueue-k8s/xqueue-server:0.1.0"
    image_repository = server_containers["xqueue-server"]["image"].rsplit(":", 1)[0]
    assert image_repository == CHART_VALUES["server"]["image"]["repository"]
    assert server_containers["migrate"]["command"] == ["xqueue-admin", "--wait-seconds", "300", "migrate"]
    server_env = env_of(server_containers["xqueue-server"])
    assert server_env["XQUEUE_PORT"] == "18040" and server_env["XQUEUE_HOST"] == "0.0.0.0"
    assert server_env["XQUEUE_DATABASE_URL"] == {"secretKeyRef": {"name": "xqueue-k8s", "key": "database-url"}}

    secret = find(objects, "Secret", "xqueue-k8s")["stringData"]
    cfg = config(rendered)
    assert secret["database-url"] == (f"postgresql://xqueue:{cfg['XQUEUE_K8S_POSTGRESQL_PASSWORD']}"
                                      "@xqueue-postgresql:5432/xqueue")
    assert secret["lms-password"] == cfg["XQUEUE_K8S_LMS_PASSWORD"]
    postgresql = find(objects, "Deployment", "xqueue-postgresql")
    assert env_of(containers(postgresql)["postgresql"])["POSTGRES_PASSWORD"] == {
        "secretKeyRef": {"name": "xqueue-k8s", "key": "postgresql-password"}}
    assert find(objects, "Service", "xqueue-postgresql")["spec"]["ports"][0]["port"] == 5432
    assert find(objects, "PersistentVolumeClaim", "xqueue-postgresql")

    operator = find(objects, "Deployment", "xqueue-operator")
    op = containers(operator)["xqueue-operator"]
    assert op["image"].rsplit(":", 1)[0] == CHART_VALUES["operator"]["image"]["repository"]
    op_env = env_of(op)
    assert op_env["XQOP_NAMESPACES"] == "edx-prod"     # the Open edX namespace only, by default
    assert op_env["XQOP_XQUEUE_URL"] == "http://xqueue-server.edx-prod.svc:18040"
    assert op_env["XQOP_GRADER_IMAGE"].rsplit(":", 1)[0] == CHART_VALUES["grader"]["image"]["repository"]
    assert op_env["XQOP_ADMIN_USERNAME"] == "coursegrader-operator"
    assert operator["spec"]["template"]["spec"]["serviceAccountName"] == "xqueue-operator"
    find(objects, "ServiceAccount", "xqueue-operator")
    binding = find(objects, "RoleBinding", "xqueue-operator-workloads")
    assert binding["roleRef"]["name"] == "xqueue-operator-workloads-edx-prod"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "xqueue-operator", "namespace": "edx-prod"}]

    crd = find(objects, "CustomResourceDefinition", "coursegraders.grading.xqueue-k8s.io")
    assert crd == yaml.safe_load((ROOT / "crds" / "coursegraders.grading.xqueue-k8s.io.yaml").read_text())

    job = find(objects, "Job", "xqueue-server-job")   # `tutor k8s do init` runs "<service>-job"
    job_env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert job_env["XQUEUE_K8S_LMS_PASSWORD"] == {"secretKeyRef": {"name": "xqueue-k8s", "key": "lms-password"}}


def secret_refs(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(Secret name, key) of every secretKeyRef and secret volume item in the objects."""
    refs: set[tuple[str, str]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            if "secret" in node and "secretName" in node["secret"]:
                refs.update((node["secret"]["secretName"], item["key"]) for item in node["secret"].get("items", []))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(objects)
    return refs


@pytest.mark.parametrize("settings", [{}, {"XQUEUE_K8S_DATABASE_URL": "postgresql://u:p@db:5432/x"}])
def test_every_secret_reference_names_a_key_the_secret_has(tmp_path: Path, settings: dict[str, str]) -> None:
    objects = k8s_objects(render(tmp_path / "root", settings))
    keys = set(find(objects, "Secret", "xqueue-k8s")["stringData"])
    refs = secret_refs(objects)
    assert {name for name, _ in refs} == {"xqueue-k8s"}
    assert {key for _, key in refs} <= keys, refs
    assert {"database-url", "lms-password", "admin-password"} <= {key for _, key in refs}


def test_plugin_ships_the_crd_of_crds() -> None:
    # A symlink, so the plugin can never ship a stale CRD; building the wheel copies the file's content.
    shipped = PLUGIN_DIR / "tutorxqueuek8s" / "templates" / "xqueue-k8s" / "k8s" / "crd.yml"
    crd = ROOT / "crds" / "coursegraders.grading.xqueue-k8s.io.yaml"
    assert shipped.resolve() == crd.resolve()
    assert filecmp.cmp(shipped, crd, shallow=False)


def test_pod_specs_are_restricted(rendered: Path) -> None:
    for name in ("xqueue-server", "xqueue-postgresql", "xqueue-operator"):
        pod = find(k8s_objects(rendered), "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in containers({"spec": {"template": {"spec": pod}}}).values():
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_external_database_and_cluster_wide_operator(tmp_path: Path) -> None:
    root = render(tmp_path / "root", {"XQUEUE_K8S_DATABASE_URL": "postgresql://xq:pw@db.example.org:5432/xqueue",
                                      "XQUEUE_K8S_OPERATOR_CLUSTER_WIDE": "true"})
    objects = k8s_objects(root)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Deployment", "xqueue-postgresql") not in names and ("Service", "xqueue-postgresql") not in names
    assert find(objects, "Secret", "xqueue-k8s")["stringData"]["database-url"] == (
        "postgresql://xq:pw@db.example.org:5432/xqueue")
    assert ("ClusterRoleBinding", "xqueue-operator-workloads-openedx") in names
    assert ("RoleBinding", "xqueue-operator-workloads") not in names
    assert env_of(containers(find(objects, "Deployment", "xqueue-operator"))["xqueue-operator"])[
        "XQOP_NAMESPACES"] == ""
    assert "xqueue-postgresql" not in compose(root, "docker-compose.yml")["services"]


def test_without_operator_no_crd_or_rbac(tmp_path: Path) -> None:
    root = render(tmp_path / "root", {"XQUEUE_K8S_RUN_OPERATOR": "false"})
    kinds = {o["kind"] for o in k8s_objects(root) if o["metadata"]["name"].startswith(("xqueue-", "coursegraders"))}
    assert kinds == {"Deployment", "Service", "PersistentVolumeClaim", "Job", "Secret"}
    resources = yaml.safe_load((root / "env" / "kustomization.yml").read_text())["resources"]
    assert "plugins/xqueue-k8s/k8s/crd.yml" not in resources


def test_local_compose_runs_the_server_and_postgresql(rendered: Path) -> None:
    services = compose(rendered, "docker-compose.yml")["services"]
    server = services["xqueue-server"]
    cfg = config(rendered)
    assert server["image"] == "ghcr.io/xqueue-k8s/xqueue-server:0.1.0"
    assert server["environment"]["XQUEUE_PORT"] == "18040"
    pg = services["xqueue-postgresql"]["environment"]
    assert server["environment"]["XQUEUE_DATABASE_URL"] == (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@xqueue-postgresql:5432/{pg['POSTGRES_DB']}")
    assert "xqueue-postgresql" in server["depends_on"]
    # The files volume belongs to the server's uid (Tutor's permissions service sets it).
    assert "../../data/xqueue-k8s/files:/mounts/xqueue-k8s-files:z" in services["permissions"]["volumes"]
    setowners = (rendered / "env" / "apps" / "permissions" / "setowners.sh").read_text()
    assert "setowner 10001 /mounts/xqueue-k8s-files" in setowners
    job = compose(rendered, "docker-compose.jobs.yml")["services"]["xqueue-server-job"]
    assert job["environment"]["XQUEUE_K8S_LMS_PASSWORD"] == cfg["XQUEUE_K8S_LMS_PASSWORD"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def database(postgres: LocalPostgres) -> str:
    return create_database(postgres.url)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_init_task_creates_the_lms_account_the_lms_settings_use(
        rendered: Path, database: str, tmp_path: Path, server_process: list[subprocess.Popen[bytes]]) -> None:
    tasks = dict(init_tasks(rendered))
    script = tasks["xqueue-server"]
    cfg = config(rendered)
    assert cfg["XQUEUE_K8S_LMS_PASSWORD"] not in script and cfg["XQUEUE_K8S_ADMIN_PASSWORD"] not in script
    # Run it as `tutor local do init` does (sh -e -c in the job service), with that service's
    # environment; only the database is this test's own.
    job_env = compose(rendered, "docker-compose.jobs.yml")["services"]["xqueue-server-job"]["environment"]
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", **{k: str(v) for k, v in job_env.items()},
           "XQUEUE_DATABASE_URL": database}
    for _attempt in range(2):   # twice: re-running `do init` must keep working (accounts are reset, not duplicated)
        done = subprocess.run(["sh", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert cfg["XQUEUE_K8S_LMS_PASSWORD"] not in done.stdout + done.stderr
    assert "updated account lms" in done.stdout and "updated account coursegrader-operator" in done.stdout

    # The real server, configured from the rendered compose service, accepts the LMS settings' account.
    server_env = compose(rendered, "docker-compose.yml")["services"]["xqueue-server"]["environment"]
    port = free_port()
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in server_env.items()},
           "XQUEUE_DATABASE_URL": database, "XQUEUE_HOST": "127.0.0.1", "XQUEUE_PORT": str(port),
           "XQUEUE_STORAGE_DIR": str(tmp_path / "files"), "XQUEUE_LOCAL_STATE_DIR": str(tmp_path / "state")}
    server_process.append(subprocess.Popen([str(BIN / "xqueue-server")], env=env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    for _ in range(600):
        try:
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert server_process[0].poll() is None, "xqueue-server exited"
        assert time.monotonic() < deadline, "xqueue-server did not become healthy in 60 s"
        time.sleep(0.1)

    interface = settings_value(rendered / "env" / "apps" / "openedx" / "settings" / "lms" / "production.py",
                               "XQUEUE_INTERFACE")
    session = requests.Session()
    reply = session.post(f"{base}/xqueue/login/", data=interface["django_auth"], timeout=10).json()
    assert reply == {"return_code": 0, "content": "Logged in"}
    wrong = requests.post(f"{base}/xqueue/login/", data={"username": "lms", "password": "not-the-password"},
                          timeout=10).json()
    assert wrong["return_code"] == 1
    # The operator's admin account works on the admin API.
    admin = requests.get(f"{base}/api/v1/queues", auth=("coursegrader-operator", cfg["XQUEUE_K8S_ADMIN_PASSWORD"]),
                         timeout=10)
    assert admin.status_code == 200, admin.text


def test_plugin_is_listed_by_tutor(rendered: Path) -> None:
    assert PLUGIN in config(rendered)["PLUGINS"]


# A stand-in for tutor-xqueue's settings role: a single-file Tutor plugin named "xqueue" that sets
# XQUEUE_INTERFACE in the common settings patch, exactly where tutor-xqueue sets it.
FAKE_TUTOR_XQUEUE = '''
from tutor import hooks
hooks.Filters.ENV_PATCHES.add_item(("openedx-common-settings", """
XQUEUE_INTERFACE = {"url": "http://xqueue:8000", "django_auth": {"username": "lms", "password": "old"}}
"""))
'''


def test_with_tutor_xqueue_still_enabled_the_lms_uses_xqueue_k8s_and_tutor_warns(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "plugins-root").mkdir(parents=True)
    (root / "plugins-root" / "xqueue.py").write_text(FAKE_TUTOR_XQUEUE)
    render(root, also_enable=("xqueue",))
    assert {"xqueue", PLUGIN} <= set(config(root)["PLUGINS"])
    settings = root / "env" / "apps" / "openedx" / "settings"
    lms = settings / "lms" / "production.py"
    assert "http://xqueue:8000" in lms.read_text()     # the old plugin's setting is rendered...
    for path in (lms, settings / "cms" / "production.py"):
        assert settings_value(path, "XQUEUE_INTERFACE")["url"] == "http://xqueue-server:18040"   # ...and overridden
    assert "tutor plugins disable xqueue" in (root / "config-save.log").read_text()
