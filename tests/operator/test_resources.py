"""Desired objects built from a CourseGrader spec."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

from coursegrader_operator import constants as C
from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.resources import (
    Owner,
    build_config_map,
    build_credentials_secret,
    build_deployment,
    build_network_policy,
    build_objects,
    build_service_account,
    config_hash,
    grader_uid,
    grader_username,
    termination_grace_seconds,
)
from coursegrader_operator.spec import CourseGraderSpec, parse_spec

CONTRACTS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def contract_variables() -> set[str]:
    return set(re.findall(r"XQGRADER_[A-Z_]+", CONTRACTS.read_text()))


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def test_every_grader_variable_is_one_the_contract_defines(owner: Owner, spec: CourseGraderSpec) -> None:
    deployment = build_deployment(owner, spec, 2)
    pod = deployment["spec"]["template"]["spec"]
    used = set(build_config_map(owner, spec)["data"])
    for container in pod["initContainers"] + pod["containers"]:
        used |= {n for n in env_names(container) if n.startswith("XQGRADER_")}
    assert used <= contract_variables(), used - contract_variables()
    assert {"XQGRADER_SERVER_URL", "XQGRADER_QUEUE", "XQGRADER_USERNAME", "XQGRADER_PASSWORD_FILE",
            "XQGRADER_SLOTS", "XQGRADER_HTTP_PORT", "XQGRADER_DRAIN_SECONDS", "XQGRADER_REPO_URL",
            "XQGRADER_LIMIT_WALL_SECONDS"} <= used


def test_pod_meets_pod_security_restricted(owner: Owner, spec: CourseGraderSpec) -> None:
    pod = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod and "hostPID" not in pod
    for container in pod["initContainers"] + pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
    for volume in pod["volumes"]:
        assert "hostPath" not in volume


def test_each_course_grades_under_a_uid_of_its_own(owner: Owner, spec: CourseGraderSpec) -> None:
    """RLIMIT_NPROC counts a uid's tasks node-wide: courses must not share one (see grader_uid)."""
    pod = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]
    (grader,), (fetch,) = pod["containers"], pod["initContainers"]
    uid = grader["securityContext"]["runAsUser"]
    assert uid == grader_uid(owner.namespace, owner.name) == grader_uid(owner.namespace, owner.name)
    assert 1_000_000 <= uid < 1_000_000 + 2**30
    # fetch-course and the volumes stay with the images' user and group (git, ssh, the demo repository).
    assert "runAsUser" not in fetch["securityContext"]
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"],
            pod["securityContext"]["fsGroup"]) == (10001, 10001, 10001)
    courses = {grader_uid(ns, f"course-{n}") for ns in ("physics", "cs50") for n in range(500)}
    assert len(courses) == 1000  # distinct across names and namespaces (a collision would only share a budget)
    assert grader_uid("a", "b-c") != grader_uid("a-b", "c")


def test_probes_use_the_grader_health_port(owner: Owner, spec: CourseGraderSpec) -> None:
    (grader,) = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]["containers"]
    assert grader["ports"] == [{"name": "http", "containerPort": C.HTTP_PORT, "protocol": "TCP"}]
    assert build_config_map(owner, spec)["data"]["XQGRADER_HTTP_PORT"] == str(C.HTTP_PORT)
    assert grader["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert grader["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert grader["livenessProbe"]["httpGet"]["port"] == "http"


def test_grace_period_outlasts_drain_and_the_longest_grading_run(owner: Owner,
                                                                  raw_spec: dict[str, Any]) -> None:
    raw_spec["sandbox"] = {"wallSeconds": 100}
    raw_spec["drainSeconds"] = 200
    spec = parse_spec(raw_spec)
    pod = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == termination_grace_seconds(spec)
    assert pod["terminationGracePeriodSeconds"] > spec.drain_seconds >= 2 * spec.sandbox.wall_seconds
    assert build_config_map(owner, spec)["data"]["XQGRADER_DRAIN_SECONDS"] == "200"


def test_init_container_fetches_the_course_into_a_shared_empty_dir(owner: Owner,
                                                                   spec: CourseGraderSpec) -> None:
    pod = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    (grader,) = pod["containers"]
    assert fetch["args"] == ["fetch-course"] and fetch["command"] == ["xqueue-grader"]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert env["XQGRADER_REPO_URL"] == spec.repo.url
    assert env["XQGRADER_REPO_REF"] == "main" and env["XQGRADER_REPO_SUBPATH"] == "graders"
    assert env["XQGRADER_GRADER_ROOT"] == C.GRADER_ROOT
    assert "XQGRADER_REPO_CREDENTIALS_DIR" not in env
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["course"]
    course_mount = next(m for m in grader["volumeMounts"] if m["name"] == "course")
    assert course_mount == {"name": "course", "mountPath": C.GRADER_ROOT, "readOnly": True}


def test_repo_credentials_are_mounted_only_into_the_fetch_container(owner: Owner,
                                                                     raw_spec: dict[str, Any]) -> None:
    raw_spec["repo"]["credentialsSecretRef"] = {"name": "deploy-key"}
    pod = build_deployment(owner, parse_spec(raw_spec), 1)["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    (grader,) = pod["containers"]
    assert any(m["name"] == "repo-credentials" for m in fetch["volumeMounts"])
    assert not any(m["name"] == "repo-credentials" for m in grader["volumeMounts"])
    assert {"name": "XQGRADER_REPO_CREDENTIALS_DIR", "value": C.REPO_CREDENTIALS_DIR} in fetch["env"]


def test_password_comes_from_a_file_and_username_from_the_secret(owner: Owner,
                                                                 spec: CourseGraderSpec) -> None:
    pod = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]
    (grader,) = pod["containers"]
    env = {e["name"]: e for e in grader["env"]}
    assert "XQGRADER_PASSWORD" not in env
    assert env["XQGRADER_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "grader-login",
                                                                     "key": "username"}
    creds = next(v for v in pod["volumes"] if v["name"] == "credentials")
    assert creds["secret"]["secretName"] == "grader-login"
    assert creds["secret"]["items"] == [{"key": "password", "path": "password"}]


def test_provisioned_account_uses_the_operator_owned_secret(owner: Owner, raw_spec: dict[str, Any]) -> None:
    raw_spec["server"] = {"url": "http://xq:18040", "provision": True}
    spec = parse_spec(raw_spec)
    pod = build_deployment(owner, spec, 1)["spec"]["template"]["spec"]
    creds = next(v for v in pod["volumes"] if v["name"] == "credentials")
    assert creds["secret"]["secretName"] == "course-a-grader-credentials"
    secret = build_credentials_secret(owner, grader_username(owner, spec), "s3cret")
    assert secret["metadata"]["name"] == "course-a-grader-credentials"
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert "s3cret" not in str(secret)  # base64 in data, never the clear text
    assert grader_username(owner, spec) == "cg-courses-course-a"


def test_service_account_has_no_token(owner: Owner) -> None:
    assert build_service_account(owner)["automountServiceAccountToken"] is False


def test_every_object_is_owned_and_labelled(owner: Owner, spec: CourseGraderSpec) -> None:
    for kind, obj in build_objects(owner, spec, 3, OperatorConfig()).items():
        meta = obj["metadata"]
        assert obj["kind"] == kind
        assert meta["namespace"] == "courses"
        (ref,) = meta["ownerReferences"]
        assert ref == {"apiVersion": C.API_VERSION, "kind": C.KIND, "name": "course-a",
                       "uid": owner.uid, "controller": True, "blockOwnerDeletion": True}
        assert meta["labels"][C.LABEL_MANAGED_BY] == C.OPERATOR_NAME
        assert meta["labels"][C.LABEL_OWNER] == "course-a"
        assert "finalizers" not in meta


def test_objects_never_contain_empty_maps_or_lists(owner: Owner, spec: CourseGraderSpec) -> None:
    # The API server drops empty values; a desired object that carries them would never match.
    for obj in build_objects(owner, spec, 0, OperatorConfig()).values():
        for path, node in walk(obj):
            assert node != {} and node != [] and node is not None, f"{obj['kind']}{path}"


def test_deployment_selects_its_pods_and_sets_replicas(owner: Owner, spec: CourseGraderSpec) -> None:
    deployment = build_deployment(owner, spec, 7)
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["replicas"] == 7
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_config_change_rolls_the_pods(owner: Owner, raw_spec: dict[str, Any]) -> None:
    before = build_deployment(owner, parse_spec(raw_spec), 1)
    raw_spec["slots"] = 4
    after = build_deployment(owner, parse_spec(raw_spec), 1)
    key = C.ANNOTATION_CONFIG_HASH
    assert before["spec"]["template"]["metadata"]["annotations"][key] != \
        after["spec"]["template"]["metadata"]["annotations"][key]
    assert config_hash(parse_spec(raw_spec)) == after["spec"]["template"]["metadata"]["annotations"][key]


def test_default_memory_limit_covers_every_slot_at_its_sandbox_limit(owner: Owner,
                                                                      raw_spec: dict[str, Any]) -> None:
    raw_spec["slots"] = 4
    raw_spec["sandbox"] = {"memoryMB": 512}
    (grader,) = build_deployment(owner, parse_spec(raw_spec), 1)["spec"]["template"]["spec"]["containers"]
    assert grader["resources"]["limits"]["memory"] == f"{256 + 4 * 512}Mi"
    raw_spec["resources"] = {"limits": {"memory": "8Gi"}}
    (grader,) = build_deployment(owner, parse_spec(raw_spec), 1)["spec"]["template"]["spec"]["containers"]
    assert grader["resources"] == {"limits": {"memory": "8Gi"}}


def test_runtime_class_and_node_selection_pass_through(owner: Owner, raw_spec: dict[str, Any]) -> None:
    raw_spec.update(runtimeClassName="gvisor", nodeSelector={"pool": "graders"},
                    tolerations=[{"key": "graders", "operator": "Exists", "effect": "NoSchedule"}])
    pod = build_deployment(owner, parse_spec(raw_spec), 1)["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "gvisor"
    assert pod["nodeSelector"] == {"pool": "graders"}
    assert pod["tolerations"][0]["key"] == "graders"


def test_network_policy_allows_only_dns_xqueue_and_git(owner: Owner, spec: CourseGraderSpec) -> None:
    config = OperatorConfig(xqueue_namespace="xqueue", xqueue_pod_labels={"app.kubernetes.io/name": "xqueue"})
    np = build_network_policy(owner, spec, config)
    assert np["spec"]["policyTypes"] == ["Egress"]
    assert np["spec"]["podSelector"]["matchLabels"][C.LABEL_INSTANCE] == "course-a"
    dns, xqueue, git = np["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert xqueue["ports"] == [{"protocol": "TCP", "port": 18040}]
    assert xqueue["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "xqueue"}},
                             "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "xqueue"}}}]
    assert git["ports"] == [{"protocol": "TCP", "port": 443}]


def test_network_policy_pins_an_ip_literal_server(owner: Owner, raw_spec: dict[str, Any]) -> None:
    raw_spec["server"]["url"] = "http://10.1.2.3:8040"
    raw_spec["repo"]["url"] = "/srv/course"
    np = build_network_policy(owner, parse_spec(raw_spec), OperatorConfig())
    _dns, xqueue = np["spec"]["egress"]  # local repo: no git rule at all
    assert xqueue["to"] == [{"ipBlock": {"cidr": "10.1.2.3/32"}}]
    assert xqueue["ports"] == [{"protocol": "TCP", "port": 8040}]


def test_network_policy_can_be_disabled(owner: Owner, raw_spec: dict[str, Any]) -> None:
    raw_spec["networkPolicy"] = {"enabled": False}
    assert "NetworkPolicy" not in build_objects(owner, parse_spec(raw_spec), 1, OperatorConfig())
