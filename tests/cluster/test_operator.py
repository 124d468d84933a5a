"""The operator against a real control plane (tier B: pods become Ready through kwok).

Each test runs the real operator in-process (kopf's KopfRunner) watching a fresh namespace and
checks object state by polling with deadlines. No XQueue server here: CourseGraders point at a
closed loopback port, so the scaler reports MetricsUnavailable and holds replicas
(the scaling tests with a real server live in test_operator_scaling.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from coursegrader_operator import constants as C
from coursegrader_operator.drift import comparable, find_drift
from coursegrader_operator.resources import Owner, build_deployment
from coursegrader_operator.spec import OperatorDefaults, parse_spec
from tests.cluster.controlplane import ControlPlane
from tests.cluster.operator_harness import (
    GRADER_IMAGE,
    Rest,
    condition,
    coursegrader_manifest,
    is_ready,
    running_operator,
    secret_manifest,
    wait_for,
)
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.kwok, pytest.mark.slow, pytest.mark.timeout(240)]

DRIFT_TARGET = 10.0  # anchors.md §6.4 O5 target: a tampered object is restored within 10 s
MANAGED = ("Deployment", "ServiceAccount", "ConfigMap", "NetworkPolicy")


@pytest.fixture
def ns(kube: ControlPlane, kube_namespace: str, coursegrader_crd: str, rest: Rest,
       operator_env: dict[str, str]) -> str:
    rest.create("Secret", kube_namespace, secret_manifest("grader-login", "grader", "grader-password"))
    return kube_namespace


def names(cg: str) -> dict[str, str]:
    return {"Deployment": f"{cg}-grader", "ServiceAccount": f"{cg}-grader", "NetworkPolicy": f"{cg}-grader",
            "ConfigMap": f"{cg}-grader-config"}


def ready_cg(rest: Rest, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (cg := rest.get(C.KIND, ns, name)) and is_ready(cg) and cg,
                    timeout=timeout, what=f"CourseGrader {name} Ready")


def test_coursegrader_creates_every_managed_object(kube: ControlPlane, ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-a", slots=3, scaling={"minReplicas": 2}))
        cg = ready_cg(rest, ns, "course-a")
        uid = cg["metadata"]["uid"]

        for kind, name in names("course-a").items():
            obj = rest.get(kind, ns, name)
            assert obj is not None, kind
            (ref,) = obj["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == \
                (C.KIND, "course-a", uid, True)
            assert obj["metadata"]["labels"][C.LABEL_MANAGED_BY] == C.OPERATOR_NAME

        deployment = rest.get("Deployment", ns, "course-a-grader")
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 2
        assert deployment["status"].get("readyReplicas") == 2  # kwok made the pods Ready
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == GRADER_IMAGE
        assert pod["initContainers"][0]["args"] == ["fetch-course"]
        assert pod["automountServiceAccountToken"] is False
        sa = rest.get("ServiceAccount", ns, "course-a-grader")
        assert sa is not None and sa["automountServiceAccountToken"] is False
        cm = rest.get("ConfigMap", ns, "course-a-grader-config")
        assert cm is not None and cm["data"]["XQGRADER_SLOTS"] == "3"
        assert cm["data"]["XQGRADER_QUEUE"] == "course-queue"

        # Pod Security "restricted" admits the pods: label the namespace and dry-run a pod from the
        # template through the real admission chain.
        kube.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted", "--overwrite")
        probe_pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pss-probe"},
                     "spec": pod}
        resp = rest.session.post(rest.url("Pod", ns), params={"dryRun": "All"}, json=probe_pod, timeout=10)
        assert resp.status_code == 201, resp.text

        status = cg["status"]
        assert status["phase"] == C.PHASE_READY and status["ready"] == "2/2"
        assert status["observedGeneration"] == cg["metadata"]["generation"]
        for type_ in (C.COND_READY, C.COND_SPEC_VALID, C.COND_PROVISIONED, C.COND_RECONCILED):
            cond = condition(cg, type_)
            assert cond["status"] == "True", cond
            assert cond["reason"] and cond["lastTransitionTime"]
        # No XQueue server on that port: reported, and the replica count is held, not zeroed.
        scaling = wait_for(lambda: (c := condition(rest.get(C.KIND, ns, "course-a"), C.COND_SCALING_ACTIVE))
                           and c["reason"] == "MetricsUnavailable" and c, timeout=15, what="ScalingActive")
        assert scaling["status"] == "False"
        assert (rest.get("Deployment", ns, "course-a-grader") or {})["spec"]["replicas"] == 2

        events = wait_for(lambda: [e for e in rest.events(ns, "course-a") if e["reason"] == "Applied"],
                          timeout=15, what="an Applied event")
        assert "created Deployment course-a-grader" in events[0]["message"]
        assert not (rest.get(C.KIND, ns, "course-a") or {})["metadata"].get("finalizers")


def printed_columns(table: str) -> dict[str, str]:
    """The one row of a `kubectl get` table by column name (kubectl leaves an unset value blank)."""
    header, row = table.rstrip().splitlines()
    names = header.split()
    starts = [header.index(name) for name in names]
    ends = [*starts[1:], len(row) + 1]
    return {name: row[start:end].strip() for name, start, end in zip(names, starts, ends, strict=True)}


def test_kubectl_get_shows_queue_readiness_and_phase(kube: ControlPlane, ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-b", queue="MITx-6.00x"))
        ready_cg(rest, ns, "course-b")
        out = kube.kubectl("get", "coursegraders", "-n", ns).stdout
        header, row = out.strip().splitlines()
        assert header.split() == ["NAME", "QUEUE", "READY", "QUEUED", "PHASE", "XQUEUE", "AGE"]
        assert row.split()[:3] == ["course-b", "MITx-6.00x", "1/1"]
        assert printed_columns(out)["PHASE"] == "Ready"
        # No XQueue server listens in this test: the outage shows in the default columns (issue 12).
        wait_for(lambda: printed_columns(kube.kubectl("get", "cg", "course-b", "-n", ns).stdout)["XQUEUE"]
                 == "Unreachable", timeout=20, what="XQUEUE column says Unreachable")
        wide = kube.kubectl("get", "cg", "-n", ns, "-o", "wide").stdout
        assert "IN-FLIGHT" in wide.splitlines()[0] and "DESIRED" in wide.splitlines()[0]


def test_spec_change_updates_config_and_rolls_pods(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-c"))
        before = ready_cg(rest, ns, "course-c")
        dep_before = rest.get("Deployment", ns, "course-c-grader")
        assert dep_before is not None
        rest.patch(C.KIND, ns, "course-c", {"spec": {"slots": 5, "sandbox": {"memoryMB": 512}}})
        wait_for(lambda: (cm := rest.get("ConfigMap", ns, "course-c-grader-config"))
                 and cm["data"]["XQGRADER_SLOTS"] == "5", timeout=15, what="ConfigMap updated")
        # One reconcile applies the ConfigMap and then the Deployment, each its own request: wait for
        # the Deployment too rather than reading it the moment the ConfigMap changed.
        key = C.ANNOTATION_CONFIG_HASH
        old_hash = dep_before["spec"]["template"]["metadata"]["annotations"][key]
        dep = wait_for(lambda: (d := rest.get("Deployment", ns, "course-c-grader"))
                       and d["spec"]["template"]["metadata"]["annotations"][key] != old_hash and d,
                       timeout=15, what="Deployment rolled to the new config")
        assert dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == \
            f"{256 + 5 * 512}Mi"
        after = ready_cg(rest, ns, "course-c")
        assert after["status"]["observedGeneration"] == before["metadata"]["generation"] + 1


@pytest.mark.parametrize("tamper", ["delete-deployment", "edit-image", "scale-replicas", "delete-configmap",
                                    "edit-configmap", "open-network-policy", "delete-service-account",
                                    "enable-token"])
def test_tampered_objects_are_restored_within_10s(ns: str, rest: Rest, tamper: str) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-d"))
        cg = ready_cg(rest, ns, "course-d")
        spec = parse_spec(cg["spec"], OperatorDefaults(grader_image=GRADER_IMAGE))
        desired = comparable(build_deployment(Owner("course-d", ns, cg["metadata"]["uid"]), spec, 1))
        n = names("course-d")
        evil_image = {"spec": {"template": {"spec": {
            "containers": [{"name": "grader", "image": "evil.invalid/miner:1"}]}}}}
        checks = {
            "delete-deployment": (lambda: rest.delete("Deployment", ns, n["Deployment"]),
                                  lambda: (d := rest.get("Deployment", ns, n["Deployment"]))
                                  and find_drift(desired, d) is None),
            "edit-image": (lambda: rest.patch("Deployment", ns, n["Deployment"], evil_image, "strategic"),
                           lambda: (d := rest.get("Deployment", ns, n["Deployment"]))
                           and d["spec"]["template"]["spec"]["containers"][0]["image"] == GRADER_IMAGE),
            "scale-replicas": (lambda: rest.patch("Deployment", ns, n["Deployment"],
                                                  {"spec": {"replicas": 7}}),
                               lambda: (d := rest.get("Deployment", ns, n["Deployment"]))
                               and d["spec"]["replicas"] == 1),
            "delete-configmap": (lambda: rest.delete("ConfigMap", ns, n["ConfigMap"]),
                                 lambda: rest.get("ConfigMap", ns, n["ConfigMap"])),
            "edit-configmap": (lambda: rest.patch("ConfigMap", ns, n["ConfigMap"],
                                                  {"data": {"XQGRADER_QUEUE": "someone-elses-queue"}}),
                               lambda: (cm := rest.get("ConfigMap", ns, n["ConfigMap"]))
                               and cm["data"]["XQGRADER_QUEUE"] == "course-queue"),
            "open-network-policy": (lambda: rest.patch("NetworkPolicy", ns, n["NetworkPolicy"],
                                                       {"spec": {"egress": [{}]}}),
                                    lambda: (np := rest.get("NetworkPolicy", ns, n["NetworkPolicy"]))
                                    and {} not in np["spec"]["egress"] and len(np["spec"]["egress"]) >= 2),
            "delete-service-account": (lambda: rest.delete("ServiceAccount", ns, n["ServiceAccount"]),
                                       lambda: rest.get("ServiceAccount", ns, n["ServiceAccount"])),
            "enable-token": (lambda: rest.patch("ServiceAccount", ns, n["ServiceAccount"],
                                                {"automountServiceAccountToken": True}),
                             lambda: (sa := rest.get("ServiceAccount", ns, n["ServiceAccount"]))
                             and sa.get("automountServiceAccountToken") is False),
        }
        act, restored = checks[tamper]
        # Let the creation's own echo events pass, so the tampering is clearly a separate change.
        wait_for(lambda: restored(), timeout=10, what="initial state")
        started = time.monotonic()
        act()
        wait_for(lambda: restored(), timeout=DRIFT_TARGET, interval=0.05, what=f"repair after {tamper}")
        elapsed = time.monotonic() - started
        assert elapsed < DRIFT_TARGET
        event = wait_for(lambda: [e for e in rest.events(ns, "course-d") if e["reason"] == "DriftRepaired"],
                         timeout=10, what="a DriftRepaired event")
        assert event[0]["type"] == "Warning"
        print(f"{tamper}: restored in {elapsed:.2f}s")


def test_schema_rejects_invalid_specs(kube: ControlPlane, ns: str, rest: Rest) -> None:
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "min-above-max": ({"scaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas must not exceed"),
        "zero-without-opt-in": ({"scaling": {"minReplicas": 0}}, "allowScaleToZero"),
        "slots-zero": ({"slots": 0}, "spec.slots"),
        "short-drain": ({"sandbox": {"wallSeconds": 60}, "drainSeconds": 60}, "drainSeconds"),
        "bad-queue": ({"queue": "no spaces allowed"}, "spec.queue"),
        "bad-pull-policy": ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
        "escaping-subpath": ({"repo": {"url": "https://x.invalid/r.git", "subPath": "../../etc"}}, "subPath"),
    }
    for case, (spec, message) in cases.items():
        resp = rest.try_create(C.KIND, ns, coursegrader_manifest(f"bad-{case}", **spec))
        assert resp.status_code == 422, (case, resp.status_code, resp.text)
        assert message in resp.text, (case, resp.text)
    both = coursegrader_manifest("bad-credentials")
    both["spec"]["server"]["provision"] = True
    resp = rest.try_create(C.KIND, ns, both)
    assert resp.status_code == 422 and "exactly one of credentialsSecretRef" in resp.text
    long_name = coursegrader_manifest("x" * 50)
    resp = rest.try_create(C.KIND, ns, long_name)
    assert resp.status_code == 422 and "at most 49" in resp.text
    # kubectl shows the same rejection to course ops.
    proc = kube.kubectl("apply", "-n", ns, "-f", "-", check=False, input=json.dumps(
        coursegrader_manifest("bad-kubectl", scaling={"minReplicas": 3, "maxReplicas": 1})))
    assert proc.returncode != 0 and "minReplicas must not exceed maxReplicas" in proc.stderr


def test_invalid_spec_is_reported_in_status_without_crashing(ns: str, rest: Rest,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Valid for the schema, invalid for the operator: no spec.image while the operator has no
    # default grader image either.
    monkeypatch.delenv("XQOP_GRADER_IMAGE")
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-good", image="registry.invalid/grader:2"))
        rest.create(C.KIND, ns, coursegrader_manifest("course-bad"))
        ready_cg(rest, ns, "course-good")
        cg = wait_for(lambda: (c := rest.get(C.KIND, ns, "course-bad"))
                      and c.get("status", {}).get("phase") == C.PHASE_INVALID and c,
                      timeout=20, what="phase Invalid")
        valid = condition(cg, C.COND_SPEC_VALID)
        assert valid["status"] == "False" and "spec.image is required" in valid["message"]
        assert condition(cg, C.COND_READY)["reason"] == "InvalidSpec"
        assert cg["status"]["observedGeneration"] == cg["metadata"]["generation"]
        assert rest.get("Deployment", ns, "course-bad-grader") is None
        wait_for(lambda: [e for e in rest.events(ns, "course-bad") if e["reason"] == "InvalidSpec"],
                 timeout=10, what="an InvalidSpec warning event")
        # The other course is untouched, and fixing the spec brings this one up.
        assert is_ready(rest.get(C.KIND, ns, "course-good"))
        rest.patch(C.KIND, ns, "course-bad", {"spec": {"image": "registry.invalid/grader:2"}})
        fixed = ready_cg(rest, ns, "course-bad")
        assert condition(fixed, C.COND_SPEC_VALID)["status"] == "True"


def test_missing_credentials_secret_is_reported_then_picked_up(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-e", secret="not-yet-there"))
        cg = wait_for(lambda: (c := rest.get(C.KIND, ns, "course-e"))
                      and condition(c, C.COND_PROVISIONED).get("reason") == "SecretNotFound" and c,
                      timeout=20, what="Provisioned=False SecretNotFound")
        assert cg["status"]["phase"] == C.PHASE_PROVISIONING
        assert rest.get("Deployment", ns, "course-e-grader") is not None  # applied anyway, waits for it
        rest.create("Secret", ns, secret_manifest("not-yet-there", "grader", "pw-12345678"))
        cg = wait_for(lambda: (c := rest.get(C.KIND, ns, "course-e"))
                      and condition(c, C.COND_PROVISIONED).get("status") == "True" and c,
                      timeout=20, what="Provisioned=True")
        assert cg["status"]["graderUsername"] == "grader"


def test_deleting_a_coursegrader_removes_its_objects(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-f"))
        ready_cg(rest, ns, "course-f")
        rest.delete(C.KIND, ns, "course-f")
        # No finalizer: the object goes at once and garbage collection takes the children.
        wait_for(lambda: rest.get(C.KIND, ns, "course-f") is None, timeout=10, what="CourseGrader gone")
        for kind, name in names("course-f").items():
            def collected(k: str = kind, n: str = name) -> bool:
                return rest.get(k, ns, n) is None

            wait_for(collected, timeout=30, what=f"{kind} collected")
        # ... and the operator does not resurrect them (checked several times over two seconds).
        for _ in range(10):
            assert rest.get("Deployment", ns, "course-f-grader") is None
            time.sleep(0.2)


def test_deletion_never_hangs_while_the_operator_is_down(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-g"))
        ready_cg(rest, ns, "course-g")
    rest.delete(C.KIND, ns, "course-g")
    wait_for(lambda: rest.get(C.KIND, ns, "course-g") is None, timeout=10,
             what="deletion without an operator (no finalizer)")


def test_operator_restart_resumes_cleanly(ns: str, rest: Rest) -> None:
    with running_operator(ns):
        rest.create(C.KIND, ns, coursegrader_manifest("course-h", scaling={"minReplicas": 2}))
        before = ready_cg(rest, ns, "course-h")
        dep_before = rest.get("Deployment", ns, "course-h-grader")
        assert dep_before is not None
    ready_since = condition(before, C.COND_READY)["lastTransitionTime"]

    # While the operator is down: someone deletes the ConfigMap and a course op edits the spec.
    rest.delete("ConfigMap", ns, "course-h-grader-config")
    rest.patch(C.KIND, ns, "course-h", {"spec": {"scaling": {"maxReplicas": 4}}})
    generation = (rest.get(C.KIND, ns, "course-h") or {})["metadata"]["generation"]

    with running_operator(ns) as runner:
        wait_for(lambda: rest.get("ConfigMap", ns, "course-h-grader-config"), timeout=15,
                 what="ConfigMap restored after restart")
        after = wait_for(lambda: (c := rest.get(C.KIND, ns, "course-h"))
                         and c["status"]["observedGeneration"] == generation and is_ready(c) and c,
                         timeout=20, what="status for the new generation")
    dep_after = rest.get("Deployment", ns, "course-h-grader")
    assert dep_after is not None
    # Nothing that did not need to change changed: same replicas, same pod template generation.
    assert dep_after["spec"]["replicas"] == 2
    assert dep_after["metadata"]["generation"] == dep_before["metadata"]["generation"]
    assert condition(after, C.COND_READY)["lastTransitionTime"] == ready_since
    assert "Traceback" not in runner.output


def test_watch_recovers_from_a_silently_dropped_connection(kube: ControlPlane, ns: str, rest: Rest,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Any) -> None:
    """A connection that goes silent (no RST, no data) must not leave the operator deaf (kopf #957)."""
    host, port = kube.server.removeprefix("https://").rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    try:
        kubeconfig = tmp_path / "via-proxy.kubeconfig"
        kubeconfig.write_text(kube.kubeconfig.read_text().replace(kube.server, f"https://127.0.0.1:{proxy.port}"))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        # Long server/client timeouts: only the inactivity timeout can notice the dead stream.
        monkeypatch.setenv("XQOP_WATCH_SERVER_TIMEOUT", "600")
        monkeypatch.setenv("XQOP_WATCH_CLIENT_TIMEOUT", "900")
        monkeypatch.setenv("XQOP_WATCH_INACTIVITY_TIMEOUT", "5")
        monkeypatch.setenv("XQOP_REQUEST_TIMEOUT", "5")
        with running_operator(ns):
            rest.create(C.KIND, ns, coursegrader_manifest("course-i"))
            ready_cg(rest, ns, "course-i")
            frozen = proxy.freeze()
            assert frozen >= 2  # at least the watch streams and the operator's own client
            started = time.monotonic()
            rest.create(C.KIND, ns, coursegrader_manifest("course-j"))
            ready_cg(rest, ns, "course-j", timeout=60)
            recovered = time.monotonic() - started
            print(f"recovered from a frozen connection in {recovered:.1f}s")
            assert recovered < 45
    finally:
        proxy.close()
