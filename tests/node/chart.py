"""The whole system installed on the real test node (tier C) the way a course team does it, and driven.

``install_system(cluster, namespace)`` is a context manager: it creates the LMS account Secret and the
shared files volume, runs ``helm install`` of charts/xqueue with the locally built images
(examples/node/values.yaml: two server replicas, in-chart PostgreSQL, the operator), ``kubectl
apply``s the demo CourseGrader and the in-cluster LMS (examples/node/), waits until the course is
Ready, and port-forwards to the LMS. It yields an ``InstalledSystem``: submit as the LMS, read the
grades it received, look at the course. On exit everything is removed again (course first, then
the release, the volume and its directory).

``cluster`` is anything with the ``real_cluster`` fixture's methods (``kubectl``, ``helm``,
``port_forward``, ``images``); the module has no pytest dependency so ``make cluster-demo`` and
``make bench-cluster`` use it too (pytest is only imported for the ``installed_system`` fixture, which
tests take with ``from tests.node.chart import installed_system_fixture``).

The test process reaches the cluster only through 127.0.0.1: the API server, and ``kubectl
port-forward`` to the LMS (and, with ``server_port_forward``, to the XQueue Service).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import secrets
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "xqueue"
EXAMPLES = ROOT / "examples" / "node"
CRD_NAME = "coursegraders.grading.xqueue-k8s.io"
SERVER_UID = 10001  # the server image's user: owner of the shared files directory (hostPath has no fsGroup)
LMS_SECRET = "xqueue-lms"
LMS_PORT = 8000
FILES_CLAIM = "xqueue-files"

# Image names in build-images.sh's manifest (and real_cluster.images).
SERVER_IMAGE, OPERATOR_IMAGE = "xqueue-server", "xqueue-operator"
GRADER_IMAGE, GRADER_DEMO_IMAGE, POSTGRES_IMAGE = "xqueue-grader", "xqueue-grader-demo", "postgresql"

# The demo problem and three answers of `make run` (xqueue_server/demo.py), with the grades the
# example course's grader must give them: (correct, score). A wrong score here is a grading bug.
DEMO_PROBLEM = "hello_function"
DEMO_ANSWERS = {
    "correct": "def hello(name):\n    return 'Hello, ' + name + '!'\n",
    "incorrect": "def hello(name):\n    return 'Hi ' + name\n",
    "broken": "def hello(name)\n    return name\n",
}
DEMO_GRADES = {"correct": (True, 1.0), "incorrect": (False, 0.0), "broken": (False, 0.0)}


class Cluster(Protocol):
    """What install_system needs of the real_cluster fixture (tests/node/conftest.py)."""

    @property
    def images(self) -> Mapping[str, str]: ...

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60,
                input: str | None = None) -> Any: ...

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> Any: ...

    def port_forward(self, namespace: str, target: str, remote_port: int) -> contextlib.AbstractContextManager[int]:
        ...


# --------------------------------------------------------------------------------------------------
# Pure: names, values and manifests.


def split_ref(ref: str) -> tuple[str, str]:
    """``localhost/xqueue-k8s/NAME:TAG`` -> (repository, tag); a registry port is not a tag."""
    repository, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        raise ValueError(f"image reference without a tag: {ref!r}")
    return repository, tag


def helm_image_args(images: Mapping[str, str]) -> list[str]:
    """``--set`` arguments naming the locally built images (examples/node/values.yaml has the rest)."""
    args = []
    for key, name in (("server", SERVER_IMAGE), ("operator", OPERATOR_IMAGE), ("grader", GRADER_IMAGE),
                      ("postgresql", POSTGRES_IMAGE)):
        repository, tag = split_ref(images[name])
        args += ["--set", f"{key}.image.repository={repository}", "--set", f"{key}.image.tag={tag}"]
    return args


def fullname(release: str) -> str:
    """The chart's object name prefix (templates/_helpers.tpl xqueue.fullname)."""
    name = release if "xqueue" in release else f"{release}-xqueue"
    return name[:40].rstrip("-")


def server_url(release: str, namespace: str, port: int = 18040) -> str:
    return f"http://{fullname(release)}-server.{namespace}.svc:{port}"


def load_example(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((EXAMPLES / name).read_text()) if doc]


def lms_manifests(namespace: str, release: str, image: str, queue: str) -> list[dict[str, Any]]:
    """examples/node/lms.yaml for this namespace, release, image and queue."""
    docs = load_example("lms.yaml")
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["image"] = image
            args = {a.split("=", 1)[0]: a for a in container["args"]}
            args["--server-url"] = f"--server-url={server_url(release, namespace)}"
            args["--advertise-url"] = f"--advertise-url=http://lms.{namespace}.svc:{LMS_PORT}"
            args["--queue"] = f"--queue={queue}"
            container["args"] = list(args.values())
    return docs


def coursegrader_manifest(namespace: str, image: str, *, name: str = "demo-course", queue: str = "demo-course",
                          overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """examples/node/coursegrader-demo.yaml with this namespace and image; ``overrides`` merge into spec."""
    (doc,) = load_example("coursegrader-demo.yaml")
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"].update(queue=queue, image=image)
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(doc["spec"].get(key), Mapping):
            doc["spec"][key] = {**doc["spec"][key], **value}
        else:
            doc["spec"][key] = copy.deepcopy(value)
    return doc


def shared_files_manifests(namespace: str, pv_name: str, host_path: str) -> list[dict[str, Any]]:
    """examples/node/shared-files.yaml: a hostPath PersistentVolume (cluster-wide, so a unique name)."""
    docs = load_example("shared-files.yaml")
    for doc in docs:
        if doc["kind"] == "PersistentVolume":
            doc["metadata"]["name"] = pv_name
            doc["spec"]["hostPath"]["path"] = host_path
        else:
            doc["metadata"]["namespace"] = namespace
            doc["spec"]["volumeName"] = pv_name
    return docs


def lms_secret_manifest(namespace: str, password: str) -> dict[str, Any]:
    """users.yaml for the server (server.usersSecret), password for the LMS pod."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": LMS_SECRET, "namespace": namespace},
            "stringData": {"users.yaml": yaml.safe_dump({"lms": password}), "password": password}}


def demo_submissions(problem: str = DEMO_PROBLEM) -> list[dict[str, str]]:
    return [{"label": label, "code": code, "problem": problem} for label, code in DEMO_ANSWERS.items()]


def grade_of(record: Mapping[str, Any]) -> tuple[Any, Any] | None:
    """(correct, score) of a submission's first callback, None without one."""
    callbacks = record.get("callbacks") or []
    return (callbacks[0].get("correct"), callbacks[0].get("score")) if callbacks else None


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation): the value a fraction of the samples stay at or below."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------------------
# I/O: the installed system.


def http_json(method: str, url: str, body: Any = None, timeout: float = 60) -> Any:
    """A JSON request to a port-forwarded 127.0.0.1 URL (no proxies: urllib honours *_proxy otherwise)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5,
               diagnostics: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError (with diagnostics) at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, urllib.error.URLError) as exc:  # port-forward or pod not up yet
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            extra = f"\n{diagnostics()}" if diagnostics else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}{extra}")
        time.sleep(every)


@dataclass
class InstalledSystem:
    cluster: Cluster
    namespace: str
    release: str
    coursegrader: str
    queue: str
    lms_url: str = ""
    # Wall-clock marks (time.time(), comparable with the LMS pod's clock: same machine).
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def fullname(self) -> str:
        return fullname(self.release)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None) -> Any:
        return self.cluster.kubectl("-n", self.namespace, *args, check=check, timeout=timeout, input=input)

    def apply(self, docs: Sequence[Mapping[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    # -- the LMS

    def submit(self, items: Sequence[Mapping[str, Any]], queue: str | None = None,
               timeout: float = 120) -> list[dict[str, Any]]:
        """Submit as the LMS does; the records of the submissions (key, label, submitted_at, error)."""
        reply = http_json("POST", f"{self.lms_url}/simulator/submit",
                          {"submissions": list(items), "queue": queue or self.queue}, timeout=timeout)
        submitted: list[dict[str, Any]] = reply["submitted"]
        return submitted

    def results(self, with_msg: bool = True) -> dict[str, dict[str, Any]]:
        """Every submission the LMS made, by key, with the callbacks it received."""
        reply = http_json("GET", f"{self.lms_url}/simulator/results?msg={'1' if with_msg else '0'}")
        return {r["key"]: r for r in reply["submissions"]}

    def wait_for_grades(self, keys: Sequence[str], timeout: float, with_msg: bool = True,
                        every: float = 0.5) -> dict[str, dict[str, Any]]:
        """Wait until every key has a callback; the records by key (AssertionError with state at timeout)."""
        wanted = set(keys)

        def done() -> dict[str, dict[str, Any]] | None:
            results = self.results(with_msg=with_msg)
            graded = {k: r for k, r in results.items() if k in wanted and r["callbacks"]}
            return graded if len(graded) == len(wanted) else None

        def state() -> str:
            try:
                results = self.results(with_msg=False)
                missing = sum(1 for k in wanted if not (results.get(k) or {}).get("callbacks"))
                head = f"{missing} of {len(wanted)} submissions have no grade"
            except (OSError, ValueError) as exc:
                head = f"LMS unreachable: {exc}"
            return head + "\n" + self.diagnostics()

        result: dict[str, dict[str, Any]] = wait_until(done, timeout, f"grades of {len(wanted)} submissions",
                                                       every=every, diagnostics=state)
        return result

    # -- the course

    def coursegrader_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.kubectl("get", "coursegrader", self.coursegrader, "-o", "json").stdout)
        return obj

    def coursegraders_table(self) -> str:
        return str(self.kubectl("get", "coursegraders").stdout)

    def grader_deployment(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(
            self.kubectl("get", "deployment", f"{self.coursegrader}-grader", "-o", "json").stdout)
        return obj

    def pods(self, selector: str) -> list[dict[str, Any]]:
        listing = json.loads(self.kubectl("get", "pods", "-l", selector, "-o", "json").stdout)
        return list(listing["items"])

    def grader_pods(self) -> list[dict[str, Any]]:
        return self.pods(f"app.kubernetes.io/name=xqueue-grader,app.kubernetes.io/instance={self.coursegrader}")

    def diagnostics(self, log_lines: int = 40) -> str:
        """Pods, CourseGraders, recent events and log tails: what a failing test prints."""
        parts = []
        for args in (("get", "pods", "-o", "wide"), ("get", "coursegraders", "-o", "wide"),
                     ("get", "events", "--sort-by=.lastTimestamp")):
            proc = self.kubectl(*args, check=False, timeout=30)
            parts.append(f"$ kubectl -n {self.namespace} {' '.join(args)}\n{proc.stdout}{proc.stderr}"[-6000:])
        for target in (f"deployment/{self.fullname}-operator", f"deployment/{self.fullname}-server",
                       f"deployment/{self.coursegrader}-grader", "deployment/lms",
                       f"statefulset/{self.fullname}-postgresql"):
            proc = self.kubectl("logs", target, "--all-containers", f"--tail={log_lines}", check=False, timeout=30)
            parts.append(f"$ kubectl logs {target}\n{proc.stdout}{proc.stderr}"[-6000:])
        return "\n".join(parts)


def _apply_and_time(system: InstalledSystem, name: str, action: Callable[[], Any]) -> None:
    started = time.time()
    action()
    system.marks[f"{name}_started"] = started
    system.marks[f"{name}_done"] = time.time()


@contextlib.contextmanager
def install_system(cluster: Cluster, namespace: str, *, release: str | None = None, queue: str | None = None,
                   coursegrader_overrides: Mapping[str, Any] | None = None,
                   helm_args: Sequence[str] = (), install_timeout: float = 420,
                   ready_timeout: float = 300, keep: bool = False) -> Iterator[InstalledSystem]:
    """Install chart + CourseGrader + LMS into ``namespace`` (Pod Security restricted) and yield the handles.

    ``queue`` is the course queue (default: a fresh ``demo-<hex>``);
    ``coursegrader_overrides`` merge into the CourseGrader's spec (e.g. ``{"scaling": {"maxReplicas": 4}}``),
    ``helm_args`` are appended to ``helm install`` (e.g. ``["--set", "server.replicas=1"]``). ``keep``
    leaves the Kubernetes objects on exit, for callers that remove the whole cluster next (the demo).
    """
    release = release or f"xq-{uuid.uuid4().hex[:6]}"
    system = InstalledSystem(cluster=cluster, namespace=namespace, release=release,
                             coursegrader="demo-course", queue=queue or f"demo-{uuid.uuid4().hex[:8]}")
    images = cluster.images
    files_dir = Path(tempfile.mkdtemp(prefix=f"xqueue-files-{namespace}-"))
    pv_name = f"xqueue-files-{namespace}"[:253]
    password = secrets.token_urlsafe(24)
    installed = False
    try:
        # The server pods (uid 10001) write here; hostPath volumes get no fsGroup.
        os.chown(files_dir, SERVER_UID, SERVER_UID)
        files_dir.chmod(0o750)
        system.apply([lms_secret_manifest(namespace, password),
                      *shared_files_manifests(namespace, pv_name, str(files_dir))])
        installed = True

        def helm_install() -> None:
            cluster.helm("install", release, str(CHART), "-n", namespace, "-f", str(EXAMPLES / "values.yaml"),
                         *helm_image_args(images), "--set", f"operator.watchNamespaces={{{namespace}}}",
                         # Quick status and scaling reads for tests; the defaults are for real clusters.
                         "--set", "operator.scaleInterval=1", "--set", "operator.statusMinInterval=1",
                         *helm_args, "--wait", "--wait-for-jobs", "--timeout", f"{int(install_timeout)}s",
                         timeout=install_timeout + 30)

        _apply_and_time(system, "helm_install", helm_install)
        server_image = images[SERVER_IMAGE]
        system.apply(lms_manifests(namespace, release, server_image, system.queue))
        system.apply([coursegrader_manifest(namespace, images[GRADER_DEMO_IMAGE], name=system.coursegrader,
                                            queue=system.queue, overrides=coursegrader_overrides)])
        system.marks["coursegrader_applied"] = time.time()
        wait_until(lambda: _is_ready(system.coursegrader_object()), ready_timeout,
                   f"CourseGrader {system.coursegrader} Ready", every=1, diagnostics=system.diagnostics)
        system.marks["coursegrader_ready"] = time.time()
        system.kubectl("rollout", "status", "deployment/lms", f"--timeout={int(ready_timeout)}s",
                       timeout=ready_timeout + 30)
        with cluster.port_forward(namespace, "service/lms", LMS_PORT) as port:
            system.lms_url = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_json("GET", f"{system.lms_url}/healthz", timeout=5), 60, "the LMS via port-forward")
            system.marks["ready"] = time.time()
            yield system
    finally:
        if installed and not keep:
            uninstall(system, pv_name)
        shutil.rmtree(files_dir, ignore_errors=True)


def _is_ready(cg: Mapping[str, Any]) -> bool:
    conditions = (cg.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def uninstall(system: InstalledSystem, pv_name: str) -> None:
    """Course first (while the operator runs, so it removes the grader account), then the release."""
    k = system.kubectl
    k("delete", "coursegrader", "--all", "--wait=true", "--timeout=60s", check=False, timeout=90)
    k("delete", "deployment,service", "lms", "--ignore-not-found", "--wait=false", check=False)
    system.cluster.helm("uninstall", system.release, "-n", system.namespace, "--wait", "--timeout", "120s",
                        check=False, timeout=150)
    k("delete", "pvc", FILES_CLAIM, "--ignore-not-found", "--wait=false", check=False)
    system.cluster.kubectl("delete", "pv", pv_name, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture(name="installed_system")
def installed_system_fixture(real_cluster: Cluster, node_namespace: str) -> Iterator[InstalledSystem]:
    """The whole system in the test's namespace (``from tests.node.chart import installed_system_fixture``)."""
    with install_system(real_cluster, node_namespace) as system:
        yield system
