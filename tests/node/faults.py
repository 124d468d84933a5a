"""Drivers for the scaling and fault tests on the real node (tests/node/test_scaling_faults.py).

A `Release` is an installed chart (server replicas, in-chart PostgreSQL, operator) plus the
in-cluster LMS simulator (xqueue_server.lms_simulator); the test process reaches both only through
`kubectl port-forward` on 127.0.0.1. Everything here is bounded in time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from coursegrader_operator import constants as C
from tests.node.podops import get_json, pods, wait_for

LMS_PORT = 8000
SERVER_PORT = 18040
SQUARE = "def square(x):\n    return x * x\n"


def slow_square(seconds: float) -> str:
    """A correct answer to the example course's `square` problem that keeps a grading slot busy for
    `seconds` (the sleep runs once, in the sandboxed student run): grading is in progress long enough
    for a test to act on the pod doing it."""
    return f"import time\ntime.sleep({seconds})\n" + SQUARE


@dataclass
class Release:
    cluster: Any  # tests.node.realnode.RealNode
    namespace: str
    fullname: str  # the chart's object name prefix
    grader_image: str
    lease_seconds: float
    lms_url: str  # the LMS simulator through a port-forward on 127.0.0.1

    @property
    def server(self) -> str:
        return f"{self.fullname}-server"

    @property
    def operator(self) -> str:
        return f"{self.fullname}-operator"

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return self.cluster.kubectl(*args, **kw)

    def admin_auth(self) -> tuple[str, str]:
        secret = get_json(self.cluster, "secret", "-n", self.namespace, f"{self.fullname}-admin")
        password = base64.b64decode(secret["data"]["password"]).decode()
        return "coursegrader-operator", password

    # -- CourseGraders ---------------------------------------------------------------------------

    def apply_coursegrader(self, name: str, queue: str, **spec: Any) -> None:
        body = {
            "apiVersion": C.API_VERSION, "kind": C.KIND,
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"queue": queue, "server": {"provision": True}, "repo": {"url": "/opt/xqueue/demo-course"},
                     "image": self.grader_image, "imagePullPolicy": "Never",
                     "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "640Mi"}},
                     **spec},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def patch_coursegrader(self, name: str, patch: dict[str, Any]) -> None:
        self.kubectl("patch", "coursegrader", name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch))

    def delete_coursegrader(self, name: str) -> None:
        self.kubectl("delete", "coursegrader", name, "-n", self.namespace, "--ignore-not-found", "--wait=false",
                     check=False)
        # Its grader pods go with it (ownerReferences); wait so the next test has the node's CPUs.
        wait_for(f"grader pods of {name} gone", lambda: not self.grader_pods(name), 120, interval=1)

    def coursegrader(self, name: str) -> dict[str, Any]:
        return get_json(self.cluster, "coursegrader", "-n", self.namespace, name)

    def grader_pods(self, name: str) -> list[dict[str, Any]]:
        return pods(self.cluster, self.namespace, f"{C.LABEL_OWNER}={name}")

    def deployment(self, name: str) -> dict[str, Any]:
        return get_json(self.cluster, "deployment", "-n", self.namespace, name)

    def wait_graders_ready(self, name: str, replicas: int, timeout: float = 180) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            live = [p for p in self.grader_pods(name) if not p["metadata"].get("deletionTimestamp")]
            good = [p for p in live if _ready(p)]
            return good if len(good) == replicas and len(live) == replicas else None

        return wait_for(f"{replicas} Ready grader pod(s) of {name}", ready, timeout, interval=1)

    # -- the server, through a port-forward ------------------------------------------------------

    def in_flight_by_grader(self, queue: str) -> dict[str, int]:
        """Submissions leased per grader address (the pod IP), from the admin API."""
        with self.cluster.port_forward(self.namespace, f"svc/{self.server}", SERVER_PORT) as port:
            reply = requests.get(f"http://127.0.0.1:{port}/api/v1/queues/{queue}/length",
                                 auth=self.admin_auth(), timeout=10)
        reply.raise_for_status()
        return {str(k): int(v) for k, v in (reply.json().get("in_flight_by_grader") or {}).items()}

    def pod_grading(self, name: str, queue: str, timeout: float = 60) -> dict[str, Any]:
        """The grader pod that holds a lease on a submission of `queue` right now."""
        def probe() -> dict[str, Any] | None:
            busy = {ip for ip, count in self.in_flight_by_grader(queue).items() if count > 0}
            for pod in self.grader_pods(name):
                if (pod.get("status") or {}).get("podIP") in busy:
                    return pod
            return None

        return wait_for(f"a grader pod of {name} grading a submission of {queue}", probe, timeout, interval=0.5)


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


class Lms:
    """The in-cluster LMS simulator's JSON API (through the port-forward of `Release.lms_url`)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url
        self.http = requests.Session()

    def submit(self, queue: str, codes: list[str], label: str = "s", problem: str = "square") -> list[dict[str, Any]]:
        items = [{"label": f"{label}{i}", "problem": problem, "code": code, "student": uuid.uuid4().hex}
                 for i, code in enumerate(codes)]
        reply = self.http.post(f"{self.base}/simulator/submit", json={"queue": queue, "submissions": items},
                               timeout=120)
        reply.raise_for_status()
        submitted: list[dict[str, Any]] = reply.json()["submitted"]
        return submitted

    def results(self, with_msg: bool = False) -> dict[str, dict[str, Any]]:
        reply = self.http.get(f"{self.base}/simulator/results", params={"msg": "1" if with_msg else "0"},
                              timeout=30)
        reply.raise_for_status()
        return {s["key"]: s for s in reply.json()["submissions"]}

    def wait_graded(self, keys: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Results once every key has at least one callback (AssertionError naming the missing ones)."""
        deadline = time.monotonic() + timeout
        while True:
            results = self.results()
            missing = [k for k in keys if not results.get(k, {}).get("callbacks")]
            if not missing:
                return results
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(missing)} of {len(keys)} submissions got no grade within "
                                     f"{timeout:.0f} s: {missing[:5]}")
            time.sleep(1)


def assert_exactly_one_correct_grade(lms: Lms, keys: list[str], settle: float = 5.0) -> dict[str, dict[str, Any]]:
    """Every submission has exactly one callback, correct with full score; waits `settle` seconds
    after the last one first, so a late duplicate (re-offered after a lease) would be seen."""
    time.sleep(settle)
    results = lms.results()
    problems = []
    for key in keys:
        callbacks = results[key]["callbacks"]
        if len(callbacks) != 1:
            problems.append(f"{key}: {len(callbacks)} callbacks")
        elif not (callbacks[0].get("correct") is True and callbacks[0].get("score") == 1
                  and callbacks[0].get("problem") is None):
            problems.append(f"{key}: {callbacks[0]}")
    assert not problems, problems
    return results


@contextlib.contextmanager
def lms_client(release: Release) -> Iterator[Lms]:
    lms = Lms(release.lms_url)
    try:
        yield lms
    finally:
        lms.http.close()


@dataclass
class Sampler:
    """Samples a Deployment's desired and ready replicas every `interval` seconds in a thread."""

    release: Release
    name: str
    interval: float = 1.0
    limit: float = 600.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic, spec, ready)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                body = self.release.deployment(self.name)
                self.samples.append((time.monotonic(), int(body["spec"].get("replicas") or 0),
                                     int((body.get("status") or {}).get("readyReplicas") or 0)))
                self._stop.wait(self.interval)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def stop(self) -> list[tuple[float, int, int]]:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise AssertionError(f"replica sampler failed: {self.error!r}")
        return self.samples
