"""The grader sandbox inside a real Pod Security "restricted" pod on the real node (tier C).

Locally the sandbox tests run as root on the host; in a cluster the grader runs as its course's uid with
no capabilities, no_new_privs, the runtime's default seccomp profile and a read-only root, and the
sandbox must build its own layers on top of that. Two checks:

* the isolation layers in force in a grader pod rendered by the operator's own builders: what the
  running daemon exports (xqgrader_sandbox_feature), what the container itself has, and what a
  student process run through the sandbox observes about itself;
* the local abuse suite (tests/grader/test_abuse*.py, its hostile student code and its assertions,
  unchanged) run with pytest inside a pod with the grader pod's exact spec, against the image's own
  xqueue_grader; every locally collected case must pass there.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from coursegrader_operator.resources import grader_uid
from tests.node import inpod_suite
from tests.node.grader_pod import coursegrader_spec, credentials_secret, idle_pod, operator_objects
from tests.node.podops import apply, describe, pods, wait_for, wait_started

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(900)]

ASSETS = Path(__file__).resolve().parent / "assets"
CONTAINER = "grader"
# Active in a restricted pod. Not among them: a private IPC namespace per run, which needs
# CAP_SYS_ADMIN or a user namespace - a restricted pod has neither (seccomp's SysV IPC class
# closes the same hole).
EXPECTED_LAYERS = {"seccomp", "landlock", "network_blocked", "rlimits", "no_new_privs", "no_capabilities",
                   "read_only_root"}
EXPECTED_FEATURES = {"seccomp", "landlock", "landlock_signal_scope", "network_blocked", "no_capabilities",
                     "read_only_root", "seccomp_unix_sockets", "seccomp_other_socket_families", "seccomp_sysv_ipc",
                     "seccomp_process_control", "seccomp_file_metadata"}


def metric_values(text: str, name: str) -> dict[str, float]:
    """Values of one Prometheus metric by its `feature` label ('' when it has none)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf'^{re.escape(name)}(?:\{{feature="([^"]*)"\}})?\s+(\S+)$', line)
        if m:
            values[m.group(1) or ""] = float(m.group(2))
    return values


def start_grader(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    """The operator's grader objects for a course, applied without an operator; the daemon runs, its
    XQueue is unreachable on purpose (the sandbox starts before the first login)."""
    secret = f"{name}-creds"
    spec = coursegrader_spec(cluster.images["xqueue-grader-demo"], queue=name,
                             server_url="http://127.0.0.1:9", secret=secret)
    objects = operator_objects(name, ns, spec)
    objects.pop("NetworkPolicy", None)
    apply(cluster, [credentials_secret(secret, ns, "grader", "not-used"), *objects.values()])
    selector = f"app.kubernetes.io/instance={name}"
    (pod,) = wait_for(f"the {name} grader pod", lambda: pods(cluster, ns, selector), 60)
    return wait_started(cluster, ns, pod["metadata"]["name"], CONTAINER, timeout=180)


def test_grader_pod_reports_its_isolation_layers(real_cluster: Any, node_namespace: str) -> None:
    ns = node_namespace
    pod = start_grader(real_cluster, ns, "layers")
    name = pod["metadata"]["name"]

    # 1. What the grader says: the running daemon's metrics (what a cluster's monitoring scrapes) and
    # `xqueue-grader selftest` in the same container (the sandbox started as the daemon starts it,
    # one job run through it).
    with real_cluster.port_forward(ns, f"pod/{name}", 8080) as port:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    features = metric_values(text, "xqgrader_sandbox_feature")
    assert {k for k, v in features.items() if v == 1.0} == EXPECTED_FEATURES, features
    assert metric_values(text, "xqgrader_landlock_abi")[""] >= 6  # signal scoping needs ABI 6
    out = real_cluster.kubectl("exec", "-n", ns, name, "-c", CONTAINER, "--", "xqueue-grader", "selftest", "--json",
                               timeout=120, check=False)
    selftest = json.loads(out.stdout)
    assert out.returncode == 0 and selftest["ok"] is True and selftest["missing"] == [], out.stdout + out.stderr
    layers = selftest["layers"]
    active = {name for name, on in (
        ("seccomp", layers["seccomp"]["active"] and all(layers["seccomp"]["classes"].values())),
        ("landlock", layers["landlock"]["active"] and layers["landlock"]["signal_and_abstract_socket_scope"]
         and layers["landlock"]["tcp"]),
        ("network_blocked", layers["network"] == "socket-denied"),
        ("rlimits", layers["rlimits"]), ("no_new_privs", layers["no_new_privs"]),
        ("no_capabilities", layers["no_capabilities"]), ("read_only_root", layers["read_only_root"]),
        ("ipc_namespace_per_run", layers["ipc_namespace_per_run"])) if on}
    assert active == EXPECTED_LAYERS, json.dumps(layers, indent=1)
    # The course's own uid (RLIMIT_NPROC is counted per uid node-wide), not the images' 10001.
    uid = grader_uid(ns, "layers")
    assert layers["exposed_paths"] == [] and layers["sandbox_uid"] == uid, layers

    # 2. What the grader container and a sandboxed student process have, measured in the pod.
    out = real_cluster.kubectl("exec", "-i", "-n", ns, name, "-c", CONTAINER, "--", "python", "-",
                               input=(ASSETS / "isolation_report.py").read_text(), timeout=120)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    container, child = report["container"], report["child"]
    status = container["status"]
    # Pod Security "restricted" as rendered by the operator: no capabilities at all, no_new_privs,
    # the runtime's seccomp filter, a non-root uid and a read-only root file system.
    assert {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), "0000000000000000"), status
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    assert container["euid"] == uid
    assert container["root_fs"].startswith("OSError: Read-only file system"), container["root_fs"]
    # The sandbox's own layers on top, as detected at start-up.
    assert report["features"]["seccomp"] is True and report["features"]["landlock"] is True, report["features"]
    assert report["features"]["network"] == "socket-denied" and report["features"]["exposed_paths"] == []
    # And what the student process observes: every rlimit of the run, no capabilities, a seccomp
    # filter, no IP socket, no grader root, no /proc, an environment without credentials.
    limits = report["expected_limits"]
    memory = limits["memory_mb"] * 1024 * 1024
    assert "error" not in child, child
    assert child["rlimits"] == {
        "RLIMIT_CPU": [limits["cpu_seconds"], limits["cpu_seconds"] + 1],
        "RLIMIT_AS": [memory, memory],
        "RLIMIT_FSIZE": [limits["file_size_kb"] * 1024] * 2,
        "RLIMIT_NOFILE": [limits["open_files"]] * 2,
        "RLIMIT_NPROC": [limits["processes"]] * 2,
        "RLIMIT_CORE": [0, 0],
        "RLIMIT_MEMLOCK": [0, 0],
    }, child["rlimits"]
    assert child["capabilities"] == {"effective": 0, "permitted": 0, "inheritable": 0}
    assert (child["seccomp_mode"], child["no_new_privs"]) == (2, 1)
    assert child["inet_socket"] == "PermissionError"
    assert child["read_grader_root"] == "PermissionError"
    assert child["list_proc"] == "PermissionError"
    assert not [k for k in child["environment"] if k.startswith("XQGRADER") or "PASSWORD" in k]


def test_abuse_suite_passes_inside_a_grader_pod(real_cluster: Any, node_namespace: str) -> None:
    ns = node_namespace
    files = inpod_suite.suite_files()
    expected = inpod_suite.local_collection(files)
    spec = coursegrader_spec(real_cluster.images["xqueue-grader-demo"], queue="abuse",
                             server_url="http://127.0.0.1:9", secret="unused")
    objects = operator_objects("abuse", ns, spec)
    deployment = objects["Deployment"]
    # The grader pod's spec with an idle process in place of the daemon. It runs under the course's
    # own uid, as every grader container does: RLIMIT_NPROC counts the tasks of a uid machine-wide
    # (no user namespaces), so the fork-bomb case must not depend on how busy the rest of the node
    # is (the local suite gives each session its own uid for the same reason).
    pod = idle_pod(deployment, "abuse-suite")
    apply(real_cluster, [objects["ServiceAccount"], pod])
    wait_started(real_cluster, ns, "abuse-suite", CONTAINER, timeout=180)

    archive = inpod_suite.archive_text()
    command = inpod_suite.pytest_command(files, timeout=240)
    started = time.monotonic()
    out = real_cluster.kubectl("exec", "-i", "-n", ns, "abuse-suite", "-c", CONTAINER, "--", "sh", "-c", command,
                               input=archive, timeout=600, check=False)
    elapsed = time.monotonic() - started
    output = out.stdout + out.stderr
    results = inpod_suite.parse_results(out.stdout)
    assert results is not None, f"no results line from the pod (exit {out.returncode}):\n{output[-6000:]}\n" \
                            f"{describe(real_cluster, ns, 'abuse-suite')}"
    # Only what a harness without root cannot drive is left out, by the plugin's stated rule.
    assert sorted(results.deselected) == sorted(inpod_suite.plugin_module().deselected_ids(expected))
    ran = sorted(set(expected) - set(results.deselected))
    assert sorted(results.outcomes) == ran, sorted(set(ran) ^ set(results.outcomes))
    failed = {k: v for k, v in results.outcomes.items() if v != "passed"}
    digest = "\n\n".join(f"{k}: {v}\n{results.failures.get(k, '')}" for k, v in sorted(failed.items()))
    assert not failed and out.returncode == 0, f"{len(failed)} of {len(ran)} failed in the pod:\n{digest}"
    assert len(ran) >= 20, ran
    print(f"abuse suite in the pod: {len(ran)} passed, {len(results.deselected)} need a root harness, "
          f"in {elapsed:.1f} s")
