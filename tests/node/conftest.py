"""Fixtures for tests on a real Kubernetes node (test tier C; see docs/k8s-test-infra.md).

Contract (other test modules build on it; keep names and attributes stable):

* ``real_cluster`` (session): ONE tier-C cluster per pytest run - etcd, kube-apiserver,
  controller-manager, scheduler, and a real node (containerd, kubelet, kube-proxy, CoreDNS) running
  the project's images, with ``KUBECONFIG`` exported. Skipped (with the reason) only when the tier
  cannot run here: not root, Debian packages missing, ``K8S_TEST_BIN_DIR``/``K8S_NODE_BIN_DIR`` unset
  or incomplete. A failure to start is an error. Attributes: ``.kubeconfig``, ``.server``,
  ``.kubectl(*args, check=True, timeout=60, input=None)``, ``.helm(*args, check=True, timeout=300)``,
  ``.api_client()``, ``.images`` (name -> ref for xqueue-server, xqueue-operator, xqueue-grader,
  xqueue-grader-demo, postgresql, pause; use ``imagePullPolicy: Never``), ``.node_name``,
  ``.gateway_ip``, ``.log_tails()``, ``.port_forward(namespace, target, remote_port)`` (context
  manager yielding a 127.0.0.1 port). After the session, a teardown that leaves anything on the host
  fails the run.
* ``node_namespace`` (function): a fresh namespace enforcing Pod Security "restricted" (its name),
  deleted afterwards (waiting, bounded, so pods do not pile up on the 2-core node).

Images: ``$XQK8S_IMAGE_MANIFEST`` (JSON file) or ``bash scripts/build-images.sh --manifest``.
Everything under tests/node is marked ``node``; a failing test gets the last lines of every component
log (control plane, containerd, kubelet, kube-proxy, coredns) in its report.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.cluster.controlplane import KubectlError
from tests.node.realnode import ImageSpec, RealNode, load_image_manifest, node_problem

HERE = Path(__file__).resolve().parent
LOG_TAIL_LINES = 200

# The node the failure-report hook takes logs from (also set while a start fails half-way).
_active: RealNode | None = None
# The image manifest, obtained once after collection (see pytest_collection_finish), or why not.
_images: dict[str, ImageSpec] | None = None
_images_error: BaseException | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_node: starts and stops its own RealNode; runs before real_cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in item.path.parents]
    for item in ours:
        item.add_marker(pytest.mark.node)
    # Node runs are serialised by a machine-wide lock, so a test that needs its own node must run
    # before the session's real_cluster exists: move those to the front of the tier-C tests.
    solo = [item for item in ours if item.get_closest_marker("own_node")]
    if solo and ours:
        first = items.index(ours[0])
        for item in solo:
            items.remove(item)
        items[first:first] = solo


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or reuse) the images before any test runs: a cold `scripts/build-images.sh` takes
    minutes, which must not count against the first tier-C test's timeout (pytest-timeout covers
    fixture setup). Only when a collected test needs a node and the tier can run here."""
    global _images, _images_error
    needs_node = any(HERE in item.path.parents and {"real_cluster", "own_node"} & set(getattr(item, "fixturenames", ()))
                     for item in session.items)
    if not needs_node or tier_c_skip_reason() or _images is not None:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("tier C: getting the images (scripts/build-images.sh --manifest or $XQK8S_IMAGE_MANIFEST)")
    try:
        _images = load_image_manifest()
    except Exception as exc:  # re-raised by the fixtures: an error, not a skip
        _images_error = exc


def node_images() -> dict[str, ImageSpec]:
    if _images_error is not None:
        raise _images_error
    return _images if _images is not None else load_image_manifest()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None],
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed and _active is not None and HERE in item.path.parents:
        report.sections.append((f"tier-C component logs ({_active.log_dir})", _active.log_tails(LOG_TAIL_LINES)))
    return report


def tier_c_skip_reason() -> str | None:
    problem = node_problem(os.environ.get("K8S_TEST_BIN_DIR"), os.environ.get("K8S_NODE_BIN_DIR"))
    return f"tier C (real node) cannot run here: {problem}" if problem else None


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[RealNode]:
    global _active
    if reason := tier_c_skip_reason():
        pytest.skip(reason)
    # From here on every failure is an error, not a skip: CI must not "pass" without this tier.
    node = RealNode(node_images())
    _active = node
    previous = os.environ.get("KUBECONFIG")
    try:
        node.start()
        os.environ["KUBECONFIG"] = str(node.kubeconfig)
        yield node
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        node.stop()
        _active = None
    # A teardown that leaves state on the (shared) machine fails the run.
    problems = node.teardown_problems + node.leftovers
    assert not problems, "tier-C teardown left state behind:\n" + "\n".join(problems)


@pytest.fixture
def node_namespace(real_cluster: RealNode) -> Iterator[str]:
    name = f"xq-node-{uuid.uuid4().hex[:12]}"
    real_cluster.kubectl("apply", "-f", "-", input=(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n"
        f"  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        "    pod-security.kubernetes.io/enforce-version: latest\n"))
    # Pods are rejected until the controller-manager has created the `default` ServiceAccount.
    deadline = time.monotonic() + 30
    while real_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ServiceAccount default never appeared in namespace {name}")
        time.sleep(0.1)
    yield name
    try:
        # Waiting (bounded) frees the node's CPU and memory for the next test.
        real_cluster.kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=90s", timeout=100)
    except (KubectlError, subprocess.TimeoutExpired) as exc:  # never mask the test's own outcome with a cleanup problem
        print(f"warning: could not delete namespace {name}: {exc}")


@pytest.fixture
def own_node() -> Iterator[RealNode]:
    """A started RealNode of the test's own (mark the test ``own_node`` so it runs before
    real_cluster holds the machine-wide node lock). The test may stop() it; stopped again after."""
    global _active
    if reason := tier_c_skip_reason():
        pytest.skip(reason)
    if _active is not None:
        pytest.fail("own_node cannot run while real_cluster holds the node lock (mark the test own_node)")
    node = RealNode(node_images())
    _active = node
    try:
        node.start()
        yield node
    finally:
        node.stop()
        _active = None
