"""CourseGraders imported from an xqueue-watcher conf.d, reconciled by the real operator.

The watcher's capacity (CONNECTIONS) and CodeJail limits must arrive in the grader Deployment and its
ConfigMap, and the Secret the import names must be the one the graders log in with.
"""

from __future__ import annotations

from typing import Any

import pytest

from coursegrader_operator import constants as C
from coursegrader_operator.watcher_import import JAILED, ImportOptions, convert
from tests.cluster.controlplane import ControlPlane
from tests.cluster.operator_harness import Rest, is_ready, running_operator, secret_manifest, wait_for

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.timeout(240)]

WATCHER_CONF = {"600.json": {"MITx-6.00x": {
    "SERVER_REF": "default", "CONNECTIONS": 10,
    "HANDLERS": [{"HANDLER": JAILED, "KWARGS": {"grader_root": "/edx/data/6.00x/graders/"},
                  "CODEJAIL": {"limits": {"CPU": 2, "REALTIME": 45, "VMEM": 536870912, "NPROC": 15}}}]}}}
SERVERS = {"default": {"SERVER": "http://old-xqueue:18040", "AUTH": ["watcher", "watcher-password"]}}


def test_imported_coursegrader_runs_graders_with_the_watchers_capacity_and_limits(
        kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, rest: Rest,
        operator_env: dict[str, str]) -> None:
    result = convert(WATCHER_CONF, ImportOptions(
        repo_url="https://git.example.org/mitx/6.00x-graders.git", repo_ref="main", repo_root="/edx/data",
        namespace=kube_namespace, server_url="http://127.0.0.1:9"), servers=SERVERS)
    (item,) = result.converted
    (secret,) = result.secrets
    # What the report tells the operator to create (the password is the account's on the new server).
    rest.create("Secret", kube_namespace, secret_manifest(secret.name, secret.username, "new-server-password"))
    name = item.obj["metadata"]["name"]
    with running_operator(kube_namespace):
        rest.create(C.KIND, kube_namespace, item.obj)
        cg: dict[str, Any] = wait_for(lambda: (c := rest.get(C.KIND, kube_namespace, name)) and is_ready(c) and c,
                                      timeout=90, what=f"CourseGrader {name} Ready")
    assert cg["spec"]["queue"] == "MITx-6.00x"
    deployment = rest.get("Deployment", kube_namespace, f"{name}-grader")
    assert deployment is not None
    # 10 watcher threads -> 4 slots per pod, at least 3 pods.
    assert deployment["spec"]["replicas"] >= 3
    config = rest.get("ConfigMap", kube_namespace, f"{name}-grader-config")
    assert config is not None
    assert {k: config["data"][k] for k in ("XQGRADER_QUEUE", "XQGRADER_SLOTS", "XQGRADER_LIMIT_CPU_SECONDS",
                                            "XQGRADER_LIMIT_WALL_SECONDS", "XQGRADER_LIMIT_MEMORY_MB",
                                            "XQGRADER_LIMIT_PROCESSES")} == {
        "XQGRADER_QUEUE": "MITx-6.00x", "XQGRADER_SLOTS": "4", "XQGRADER_LIMIT_CPU_SECONDS": "2",
        "XQGRADER_LIMIT_WALL_SECONDS": "45", "XQGRADER_LIMIT_MEMORY_MB": "512", "XQGRADER_LIMIT_PROCESSES": "15"}
    pod = deployment["spec"]["template"]["spec"]
    fetch_env = {e["name"]: e.get("value") for c in pod["initContainers"] for e in c.get("env", [])}
    assert fetch_env["XQGRADER_REPO_SUBPATH"] == "6.00x/graders"
    assert fetch_env["XQGRADER_REPO_REF"] == "main"
    secret_names = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secret.name in secret_names
