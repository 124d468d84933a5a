"""End to end: real XQueue server + real control plane + the operator scaling on real queue lengths.

The XQueue server runs on 127.0.0.1 with its own PostgreSQL database (tests/conftest.py); the
operator reads `GET /api/v1/queues` from it and scales a Deployment whose pods kwok makes Ready.
The test itself plays the LMS (submit) and the graders (pull, put_result): grader pods under kwok
never run, and nothing may dial their 10.x addresses.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from coursegrader_operator import constants as C
from coursegrader_operator.scaling import DELETION_COST_ANNOTATION
from tests.cluster.controlplane import ControlPlane
from tests.cluster.operator_harness import (
    Rest,
    condition,
    coursegrader_manifest,
    is_ready,
    running_operator,
    wait_for,
)
from tests.integration.clients import GRADE, GraderClient, LMSClient
from xqueue_server.testing import FakeLMS, ServerThread

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.timeout(300)]

REACTION_TARGET = 5.0  # anchors.md §6.5 A1 target: burst -> scale decision issued within 5 s
DOWN_WINDOW = 6


def admin_queues(server: ServerThread) -> list[dict[str, Any]]:
    resp = requests.get(f"{server.url}/api/v1/queues", auth=(server.admin.username, server.admin.password),
                        timeout=10)
    resp.raise_for_status()
    queues: list[dict[str, Any]] = resp.json()["queues"]
    return queues


class ReplicaSampler:
    """Records every distinct replica count of a Deployment (sampled every 50 ms) in a thread."""

    def __init__(self, kubeconfig: Path, ns: str, name: str) -> None:
        self.values: list[int] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._args = (Rest(kubeconfig), ns, name)  # its own HTTP session: sessions are not thread-safe
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 240  # bounded even if stop() is never called
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                value = deployment_replicas(*self._args)
                if not self.values or self.values[-1] != value:
                    self.values.append(value)
                time.sleep(0.05)
        except BaseException as e:  # surfaced by stop(): a dead sampler must fail the test
            self.error = e

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            if self.error is not None:
                raise AssertionError(f"replica sampler failed: {self.error!r}")
            final = deployment_replicas(*self._args)  # the stop may have come between two samples
            if self.values[-1] != final:
                self.values.append(final)
            return self.values
        finally:
            self._args[0].close()


def deployment_replicas(rest: Rest, ns: str, name: str) -> int:
    return int(((rest.get("Deployment", ns, name) or {}).get("spec") or {}).get("replicas") or 0)


def secret_data(rest: Rest, ns: str, name: str) -> dict[str, str]:
    secret = rest.get("Secret", ns, name) or {}
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def test_burst_scales_up_in_seconds_and_down_after_the_window(
        kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, rest: Rest,
        operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        xqueue_factory: Callable[..., ServerThread], fake_lms: FakeLMS) -> None:
    ns = kube_namespace
    server = xqueue_factory(lease_seconds=120)
    monkeypatch.setenv("XQOP_ADMIN_USERNAME", server.admin.username)
    monkeypatch.setenv("XQOP_ADMIN_PASSWORD", server.admin.password)
    queue = f"course-{uuid.uuid4().hex[:8]}"
    cg_name = "burst"
    deployment = f"{cg_name}-grader"

    with running_operator(ns) as runner:
        # provision: the operator creates the queue and a grader account on the real server.
        rest.create(C.KIND, ns, coursegrader_manifest(
            cg_name, queue=queue, url=server.url, secret=None, slots=2,
            scaling={"minReplicas": 1, "maxReplicas": 6, "scaleDownWindowSeconds": DOWN_WINDOW}))
        cg = wait_for(lambda: (c := rest.get(C.KIND, ns, cg_name)) and is_ready(c)
                      and condition(c, C.COND_SCALING_ACTIVE).get("status") == "True" and c,
                      timeout=60, what="CourseGrader Ready with live queue metrics")
        assert condition(cg, C.COND_PROVISIONED)["reason"] == "Provisioned"
        creds = secret_data(rest, ns, f"{cg_name}-grader-credentials")
        assert creds["username"] == f"cg-{ns}-{cg_name}" and len(creds["password"]) >= 32
        assert cg["status"]["queueLength"] == 0 and deployment_replicas(rest, ns, deployment) == 1

        # The provisioned account really works, and only for its own queue.
        grader = GraderClient(server, creds["username"], creds["password"])
        assert grader.pull(queue) is None

        # Burst: 20 submissions -> ceil(20 / 2 slots) = 10 pods, capped at maxReplicas 6.
        sampler = ReplicaSampler(kube.kubeconfig, ns, deployment)
        lms = LMSClient(server)
        for i in range(20):
            _, (code, _) = lms.submit(queue, fake_lms.callback_url(f"k{i}"), {"student_response": str(i)})
            assert code == 0
        submitted = time.monotonic()
        wait_for(lambda: deployment_replicas(rest, ns, deployment) == 6, timeout=REACTION_TARGET + 5,
                 interval=0.05, what="scale-up to maxReplicas")
        reaction = time.monotonic() - submitted
        print(f"scale-up reaction: {reaction:.2f}s")
        assert reaction < REACTION_TARGET
        cg = wait_for(lambda: (c := rest.get(C.KIND, ns, cg_name)) and c["status"].get("ready") == "6/6"
                      and c["status"].get("queueLength") == 20 and c, timeout=30,
                      what="6/6 graders Ready (kwok) and the queue length in status")
        assert condition(cg, C.COND_SCALING_LIMITED)["status"] == "True"
        row = kube.kubectl("get", "cg", cg_name, "-n", ns, "--no-headers").stdout.split()
        assert row[1:4] == [queue, "6/6", "20"], row

        # In-flight work keeps graders: pull everything (queue 0, 20 in flight) -> still 6.
        pulled = [grader.pull(queue) for _ in range(20)]
        assert all(pulled)
        wait_for(lambda: (c := rest.get(C.KIND, ns, cg_name)) and c["status"].get("queueLength") == 0
                 and c["status"].get("inFlight") == 20, timeout=15, what="queue 0 / in flight 20")
        assert deployment_replicas(rest, ns, deployment) == 6

        # All results in one bulk put_result (docs/contracts.md), so "outstanding" drops from 20 to 0
        # at one instant: the scale-down must then wait for the window and go straight to minReplicas.
        results = [{"xqueue_header": sub["xqueue_header"], "xqueue_body": json.dumps(GRADE)}
                   for sub in pulled if sub is not None]
        reply = grader.session.post(f"{server.url}/xqueue/put_result/", data={"results": json.dumps(results)},
                                    allow_redirects=False, timeout=30).json()
        assert reply["return_code"] == 0 and len(reply["content"]) == 20, reply
        assert all(item["return_code"] == 0 for item in reply["content"]), reply
        drained = time.monotonic()
        fake_lms.wait_for(lambda cbs: len(cbs) >= 20, timeout=30)
        wait_for(lambda: deployment_replicas(rest, ns, deployment) == 1, timeout=DOWN_WINDOW + 10,
                 interval=0.1, what="scale-down after the window")
        held = time.monotonic() - drained
        print(f"scale-down {held:.1f}s after the queue drained (window {DOWN_WINDOW}s)")
        assert held >= DOWN_WINDOW - 1.5  # the window (minus one scale tick of measurement slack)
        reasons = [e["reason"] for e in rest.events(ns, cg_name)]
        assert "ScaledUp" in reasons and "ScaledDown" in reasons and "Provisioned" in reasons
        # Before lowering replicas the operator marked the grader pods with pod-deletion-cost from the
        # server's in_flight_by_grader. Nothing is in flight any more (and the test's grader pulls from
        # 127.0.0.1, which is no kwok pod IP), so the surviving pod carries cost "0".
        survivors = [p for p in rest.list("Pod", ns, labelSelector=f"{C.LABEL_OWNER}={cg_name}")
                     if not p["metadata"].get("deletionTimestamp")]
        assert survivors, "no grader pod left after the scale-down"
        costs = [(p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION) for p in survivors]
        assert costs == ["0"] * len(survivors), costs
        # No flapping: over the whole burst the replica count went up (possibly in steps while the
        # submissions arrived), then down, and never up again.
        history = sampler.stop()
        peak = history.index(max(history))
        assert history[:peak + 1] == sorted(history[:peak + 1]), history
        assert history[peak:] == sorted(history[peak:], reverse=True), history
        assert history[0] == 1 and max(history) == 6 and history[-1] == 1, history

        # Deleting the CourseGrader removes the account it provisioned (the queue and its history stay).
        def account_refused() -> bool:
            # A fresh login checks the password in the database (HTTP Basic results are cached by the
            # server for 30 s). A login racing the deletion may get a 500 from the server: retried.
            resp = requests.post(f"{server.url}/xqueue/login/", timeout=10,
                                 data={"username": creds["username"], "password": creds["password"]})
            return resp.status_code == 200 and resp.json()["return_code"] == 1

        assert not account_refused()
        rest.delete(C.KIND, ns, cg_name)
        wait_for(account_refused, timeout=15, what="the provisioned account deleted")
        assert any(q["name"] == queue for q in admin_queues(server))
    assert "ScaledUp" in runner.output


def test_operator_uses_a_given_grader_secret_and_reads_lengths_with_it(
        kube_namespace: str, coursegrader_crd: str, rest: Rest, operator_env: dict[str, str],
        xqueue_factory: Callable[..., ServerThread]) -> None:
    """Without admin credentials the operator reads the length as the course's grader account."""
    ns = kube_namespace
    queue = f"course-{uuid.uuid4().hex[:8]}"
    server = xqueue_factory(queues=(queue,))
    rest.create("Secret", ns, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "grader-login"},
                               "stringData": {"username": server.grader.username,
                                              "password": server.grader.password}})
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("given", queue=queue, url=server.url, slots=1,
                                                      scaling={"maxReplicas": 3}))
        lms = LMSClient(server)
        for i in range(2):
            lms.submit(queue, f"http://127.0.0.1:9/cb/{i}", json.dumps({"n": i}))  # distinct: latest wins
        cg: dict[str, Any] = wait_for(
            lambda: (c := rest.get(C.KIND, ns, "given")) and c.get("status", {}).get("queueLength") == 2 and c,
            timeout=30, what="queue length read with the grader's own account")
        assert condition(cg, C.COND_SCALING_ACTIVE)["status"] == "True"
        wait_for(lambda: deployment_replicas(rest, ns, "given-grader") == 2, timeout=10, what="scale to 2")


def test_deleted_credentials_secret_is_regenerated_and_reprovisioned(
        kube_namespace: str, coursegrader_crd: str, rest: Rest, operator_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, xqueue_factory: Callable[..., ServerThread]) -> None:
    ns = kube_namespace
    server = xqueue_factory()
    monkeypatch.setenv("XQOP_ADMIN_USERNAME", server.admin.username)
    monkeypatch.setenv("XQOP_ADMIN_PASSWORD", server.admin.password)
    queue = f"course-{uuid.uuid4().hex[:8]}"
    secret = "regen-grader-credentials"

    def logs_in(creds: dict[str, str]) -> bool:
        resp = requests.post(f"{server.url}/xqueue/login/", timeout=10,
                             data={"username": creds["username"], "password": creds["password"]})
        return resp.status_code == 200 and resp.json()["return_code"] == 0

    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("regen", queue=queue, url=server.url, secret=None))
        wait_for(lambda: condition(rest.get(C.KIND, ns, "regen"), C.COND_PROVISIONED).get("status") == "True",
                 timeout=30, what="provisioned")
        first = secret_data(rest, ns, secret)
        assert logs_in(first)
        rest.delete("Secret", ns, secret)
        second = wait_for(lambda: (d := secret_data(rest, ns, secret)) and d != first and d, timeout=15,
                          what="a new Secret with a new password")
        assert second["username"] == first["username"]
        # The account follows the Secret: the new password works, the old one no longer does.
        wait_for(lambda: logs_in(second), timeout=15, what="login with the regenerated password")
        assert not logs_in(first)

        # An operator of the course edits the password in the Secret: the account follows that too.
        rest.patch("Secret", ns, secret, {"stringData": {"password": "chosen-by-a-human-0123456789"}})
        third = {**second, "password": "chosen-by-a-human-0123456789"}
        wait_for(lambda: logs_in(third), timeout=15, what="login with the edited password")
        assert not logs_in(second)
        wait_for(lambda: [e for e in rest.events(ns, "regen") if e["reason"] == "AccountUpdated"],
                 timeout=10, what="an AccountUpdated event")
