"""Fixtures for tests that need a real Kubernetes control plane (see docs/k8s-test-infra.md).

* ``k8s_bin_dir`` (session): the directory from ``$K8S_TEST_BIN_DIR``; skips when unset or incomplete.
* ``kube`` (session): ONE tier-B control plane per pytest run (etcd, kube-apiserver,
  kube-controller-manager, kube-scheduler, kwok and a fake Node), with ``KUBECONFIG`` exported.
  Attributes: ``.kubeconfig``, ``.server``, ``.bin_dir``, ``.log_dir``, ``.kubectl(*args, check=True)``,
  ``.api_client()``.
* ``kube_namespace`` (function): a fresh uuid-named namespace (its name, a str), deleted afterwards
  without waiting.
* ``coursegrader_crd`` (session): the CourseGrader CRD from crds/, applied and Established.
* ``rest`` (function): a ``Rest`` client (operator_harness.py) with the admin credentials.
* ``operator_env`` (function): fast XQOP_* settings for an in-process operator.

Everything under tests/cluster is marked ``cluster`` automatically. When a cluster test fails, the
last 200 lines of each component log are attached to its report.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from coursegrader_operator import constants as C
from tests.cluster.controlplane import ControlPlane, KubectlError, bin_dir_problem
from tests.cluster.operator_harness import CRD_FILE, FAST_ENV, Rest

HERE = Path(__file__).resolve().parent
LOG_TAIL_LINES = 200

# The running control plane, for the failure-report hook (also set when start() failed half-way).
_active: ControlPlane | None = None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session, not only ours: filter by location.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed and _active is not None and HERE in item.path.parents:
        report.sections.append(
            (f"control plane component logs ({_active.log_dir})", _active.log_tails(LOG_TAIL_LINES)))
    return report


@pytest.fixture(scope="session")
def k8s_bin_dir() -> Path:
    bin_dir = os.environ.get("K8S_TEST_BIN_DIR")
    if problem := bin_dir_problem(bin_dir, "B"):
        pytest.skip(f"no Kubernetes test binaries: {problem}")
    assert bin_dir is not None
    return Path(bin_dir)


@pytest.fixture(scope="session")
def kube(k8s_bin_dir: Path) -> Iterator[ControlPlane]:
    global _active
    cp = ControlPlane(k8s_bin_dir, tier="B")
    _active = cp
    previous = os.environ.get("KUBECONFIG")
    try:
        # A start failure raises ControlPlaneError (with log tails): an error, not a skip, so CI
        # cannot silently "pass" without running the cluster tests.
        cp.start()
        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
        yield cp
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        cp.stop()
        _active = None


@pytest.fixture
def kube_namespace(kube: ControlPlane) -> Iterator[str]:
    name = f"xq-test-{uuid.uuid4().hex[:16]}"
    kube.kubectl("create", "namespace", name)
    # Pods are rejected by ServiceAccount admission until the controller-manager has created the
    # namespace's `default` ServiceAccount (usually well under a second); wait so workloads created
    # by the test do not go through ReplicaSet backoff.
    deadline = time.monotonic() + 30
    for _ in range(300):
        if kube.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"ServiceAccount default never appeared in namespace {name}")
        time.sleep(0.1)
    yield name
    # --wait=false: namespace deletion (finalizers, GC) runs in the background; unique names make
    # leftovers harmless and keep teardown fast.
    try:
        kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
    except KubectlError as exc:  # never mask the test's own outcome with a cleanup problem
        print(f"warning: could not delete namespace {name}: {exc}")


@pytest.fixture(scope="session")
def coursegrader_crd(kube: ControlPlane) -> str:
    name = f"{C.PLURAL}.{C.GROUP}"
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return name


@pytest.fixture
def rest(kube: ControlPlane) -> Iterator[Rest]:
    client = Rest(kube.kubeconfig)
    yield client
    client.close()


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fast operator settings for this test (tests may add more with monkeypatch.setenv)."""
    for key in list(os.environ):
        if key.startswith("XQOP_"):
            monkeypatch.delenv(key)
    for key, value in FAST_ENV.items():
        monkeypatch.setenv(key, value)
    return dict(FAST_ENV)
