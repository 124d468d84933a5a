"""Desired objects for one CourseGrader (pure: spec in, manifests out).

Everything the operator creates is built here and applied with server-side apply, so the same
function serves creation, updates and drift repair. Builders never emit empty maps or lists: the API
server drops them, and a desired object that can never match what the server stores would look like
drift forever (see drift.py).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import constants as C
from .config import OperatorConfig
from .spec import CourseGraderSpec

GRADER_APP = "xqueue-grader"
# The images' user. Pods run as it (and it owns their volumes, fsGroup), and so does fetch-course: git
# and ssh need its passwd entry, and the demo image's repository belongs to it.
UID = 10001
# The grader container (the daemon, and the student code it runs) has a uid of its course's own, in
# this range: see grader_uid.
GRADER_UID_BASE = 1_000_000
GRADER_UID_SPAN = 1 << 30


def grader_uid(namespace: str, name: str) -> int:
    """The uid a course's grader containers run as: one per course, the same on every reconcile.

    RLIMIT_NPROC, the sandbox's bound on student processes, counts every task of a uid on the node
    (pods share the host's user namespace). Were all graders one uid, one course's fork bomb, or
    just a few busy grader pods, would leave another course's student code unable to fork at all;
    with a uid per course, a course's budget is shared only by its own replicas. Derived from the
    course's namespace and name, so nothing has to be stored; two courses get the same uid with
    probability about n²/2^31 for n courses, and then share one budget, as every course did before.
    Far above the host's own users (below 65536) and the images' 10001.
    """
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return GRADER_UID_BASE + int.from_bytes(digest[:8], "big") % GRADER_UID_SPAN


@dataclass(frozen=True)
class Owner:
    """The CourseGrader a set of objects belongs to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata", {})
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))


def child_name(owner_name: str, kind: str) -> str:
    """The name of a CourseGrader's child of the given kind (suffixes from constants.MANAGED)."""
    return f"{owner_name}-{C.MANAGED_BY_KIND[kind].name_suffix}"


@dataclass(frozen=True)
class ObjectNames:
    deployment: str
    service_account: str
    network_policy: str
    config_map: str
    secret: str

    @classmethod
    def for_owner(cls, owner_name: str) -> ObjectNames:
        return cls(deployment=child_name(owner_name, "Deployment"),
                   service_account=child_name(owner_name, "ServiceAccount"),
                   network_policy=child_name(owner_name, "NetworkPolicy"),
                   config_map=child_name(owner_name, "ConfigMap"), secret=child_name(owner_name, "Secret"))


def grader_username(owner: Owner, spec: CourseGraderSpec) -> str:
    """The XQueue account the graders log in with when the operator provisions it."""
    return spec.server.grader_username or f"cg-{owner.namespace}-{owner.name}"[:150]


def credentials_secret_name(owner: Owner, spec: CourseGraderSpec) -> str:
    return spec.server.credentials_secret or ObjectNames.for_owner(owner.name).secret


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the grader pods (immutable once a Deployment exists: never change)."""
    return {C.LABEL_NAME: GRADER_APP, C.LABEL_INSTANCE: owner.name, C.LABEL_OWNER: owner.name}


def common_labels(owner: Owner) -> dict[str, str]:
    return {
        **selector_labels(owner),
        C.LABEL_MANAGED_BY: C.OPERATOR_NAME,
        C.LABEL_PART_OF: "xqueue-k8s",
        C.LABEL_COMPONENT: "grader",
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    # controller=true lets `kubectl get -o wide`/GC treat the CourseGrader as the managing object;
    # blockOwnerDeletion keeps foreground deletion of the CourseGrader waiting for its children.
    return {"apiVersion": C.API_VERSION, "kind": C.KIND, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _metadata(owner: Owner, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": common_labels(owner),
            "ownerReferences": [owner_reference(owner)]}


def build_service_account(owner: Owner) -> dict[str, Any]:
    names = ObjectNames.for_owner(owner.name)
    # The graders never talk to the Kubernetes API: no token in the pods at all.
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _metadata(owner, names.service_account),
            "automountServiceAccountToken": False}


def grader_config(spec: CourseGraderSpec) -> dict[str, str]:
    """Non-secret grader settings, named as in docs/contracts.md (the grader reads them via envFrom)."""
    s = spec.sandbox
    return {
        "XQGRADER_SERVER_URL": spec.server.url,
        "XQGRADER_QUEUE": spec.queue,
        "XQGRADER_GRADER_ROOT": C.GRADER_ROOT,
        "XQGRADER_SLOTS": str(spec.slots),
        "XQGRADER_HTTP_PORT": str(C.HTTP_PORT),
        "XQGRADER_DRAIN_SECONDS": str(spec.drain_seconds),
        "XQGRADER_LIMIT_CPU_SECONDS": str(s.cpu_seconds),
        "XQGRADER_LIMIT_WALL_SECONDS": str(s.wall_seconds),
        "XQGRADER_LIMIT_MEMORY_MB": str(s.memory_mb),
        "XQGRADER_LIMIT_PROCESSES": str(s.processes),
        "XQGRADER_LIMIT_FILE_SIZE_KB": str(s.file_size_kb),
        "XQGRADER_LIMIT_OUTPUT_KB": str(s.output_kb),
        "XQGRADER_LIMIT_OPEN_FILES": str(s.open_files),
    }


def build_config_map(owner: Owner, spec: CourseGraderSpec) -> dict[str, Any]:
    names = ObjectNames.for_owner(owner.name)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _metadata(owner, names.config_map),
            "data": grader_config(spec)}


def config_hash(spec: CourseGraderSpec) -> str:
    payload = json.dumps(grader_config(spec), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def build_credentials_secret(owner: Owner, username: str, password: str) -> dict[str, Any]:
    """The Secret holding a provisioned grader account (only when spec.server.provision is true)."""
    names = ObjectNames.for_owner(owner.name)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {"apiVersion": "v1", "kind": "Secret", "metadata": _metadata(owner, names.secret),
            "type": "kubernetes.io/basic-auth",
            "data": {"username": b64(username), "password": b64(password)}}


def _peer_for_host(host: str) -> list[dict[str, Any]] | None:
    """An ipBlock peer when the URL names an IP literal; None when only a name is known."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return [{"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}}]


def _xqueue_peers(spec: CourseGraderSpec, config: OperatorConfig) -> list[dict[str, Any]] | None:
    if spec.network_policy.xqueue_peers:
        return [dict(p) for p in spec.network_policy.xqueue_peers]
    if config.xqueue_pod_labels:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(config.xqueue_pod_labels)}}
        if config.xqueue_namespace:
            peer["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": config.xqueue_namespace}}
        return [peer]
    return _peer_for_host(spec.server.host)


def build_network_policy(owner: Owner, spec: CourseGraderSpec, config: OperatorConfig) -> dict[str, Any]:
    """Egress only to DNS, the XQueue server and (for the init container's clone) the git host.

    NetworkPolicy applies to the whole pod, so the clone's egress is also open to the grading
    container; student code is kept off the network by the grader's sandbox as a second layer.
    A rule without `to` means "any destination on these ports" (used when no narrower peer is known).
    """
    names = ObjectNames.for_owner(owner.name)
    dns_rule: dict[str, Any] = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    if config.dns_pod_labels:
        dns_rule["to"] = [{
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.dns_namespace}},
            "podSelector": {"matchLabels": dict(config.dns_pod_labels)},
        }]
    xqueue_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": spec.server.port}]}
    peers = _xqueue_peers(spec, config)
    if peers:
        xqueue_rule["to"] = peers
    egress = [dns_rule, xqueue_rule]
    repo_port = spec.repo.port
    if repo_port is not None:
        repo_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": repo_port}]}
        if spec.network_policy.repo_peers:
            repo_rule["to"] = [dict(p) for p in spec.network_policy.repo_peers]
        egress.append(repo_rule)
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _metadata(owner, names.network_policy),
        "spec": {"podSelector": {"matchLabels": selector_labels(owner)}, "policyTypes": ["Egress"],
                 "egress": egress},
    }


def _container_security() -> dict[str, Any]:
    # Everything Pod Security "restricted" asks for, plus a read-only root filesystem.
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def default_resources(spec: CourseGraderSpec) -> dict[str, Any]:
    """Resources when the spec gives none: enough memory for every slot to hit its sandbox limit.

    The sandbox caps each run's address space at memoryMB, so slots x memoryMB (+ the daemon) is a
    limit the container cannot exceed because of student code: an OOM kill of the whole pod would
    lose every in-flight grade at once.
    """
    limit_mb = 256 + spec.slots * spec.sandbox.memory_mb
    return {"requests": {"cpu": f"{250 * spec.slots}m", "memory": f"{256 + spec.slots * 64}Mi"},
            "limits": {"memory": f"{limit_mb}Mi"}}


def termination_grace_seconds(spec: CourseGraderSpec) -> int:
    """Longer than the drain window: the daemon still has to put the last results and exit."""
    return spec.drain_seconds + 15


def build_deployment(owner: Owner, spec: CourseGraderSpec, replicas: int) -> dict[str, Any]:
    names = ObjectNames.for_owner(owner.name)
    secret = credentials_secret_name(owner, spec)
    username_key = spec.server.username_key if spec.server.credentials_secret else "username"
    password_key = spec.server.password_key if spec.server.credentials_secret else "password"
    common_env = [{"name": "HOME", "value": C.TMP_DIR},
                  {"name": "XQGRADER_GRADER_ROOT", "value": C.GRADER_ROOT}]

    fetch_env = [*common_env, {"name": "XQGRADER_REPO_URL", "value": spec.repo.url}]
    if spec.repo.ref:
        fetch_env.append({"name": "XQGRADER_REPO_REF", "value": spec.repo.ref})
    if spec.repo.sub_path:
        fetch_env.append({"name": "XQGRADER_REPO_SUBPATH", "value": spec.repo.sub_path})
    fetch_mounts: list[dict[str, Any]] = [{"name": "course", "mountPath": C.GRADER_ROOT},
                    {"name": "tmp", "mountPath": C.TMP_DIR}]
    volumes: list[dict[str, Any]] = [
        {"name": "course", "emptyDir": {"sizeLimit": spec.course_size_limit}},
        {"name": "tmp", "emptyDir": {"sizeLimit": spec.tmp_size_limit}},
        {"name": "credentials", "secret": {
            "secretName": secret, "defaultMode": 0o440,
            "items": [{"key": password_key, "path": "password"}]}},
    ]
    if spec.repo.credentials_secret:
        fetch_env.append({"name": "XQGRADER_REPO_CREDENTIALS_DIR", "value": C.REPO_CREDENTIALS_DIR})
        fetch_mounts.append({"name": "repo-credentials", "mountPath": C.REPO_CREDENTIALS_DIR,
                             "readOnly": True})
        volumes.append({"name": "repo-credentials", "secret": {
            "secretName": spec.repo.credentials_secret, "defaultMode": 0o440}})

    resources = dict(spec.resources) or default_resources(spec)
    probe_get = {"port": C.HTTP_PORT_NAME, "scheme": "HTTP"}
    grader = {
        "name": "grader",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "args": ["run"],
        "command": ["xqueue-grader"],
        "envFrom": [{"configMapRef": {"name": names.config_map}}],
        "env": [
            *common_env,
            {"name": "XQGRADER_USERNAME",
             "valueFrom": {"secretKeyRef": {"name": secret, "key": username_key}}},
            # A file, not an env var: environment variables leak to child processes far too easily.
            {"name": "XQGRADER_PASSWORD_FILE", "value": f"{C.CREDENTIALS_DIR}/password"},
        ],
        "ports": [{"name": C.HTTP_PORT_NAME, "containerPort": C.HTTP_PORT, "protocol": "TCP"}],
        "startupProbe": {"httpGet": {"path": "/healthz", **probe_get}, "periodSeconds": 2,
                         "failureThreshold": 60, "timeoutSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", **probe_get}, "periodSeconds": 10,
                          "failureThreshold": 3, "timeoutSeconds": 2},
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe_get}, "periodSeconds": 5,
                           "failureThreshold": 2, "timeoutSeconds": 2},
        "resources": resources,
        # The course's own uid (grader_uid); its group stays the pod's, which owns the volumes.
        "securityContext": {**_container_security(), "runAsUser": grader_uid(owner.namespace, owner.name)},
        "volumeMounts": [
            # Read-only: student code runs in this container and must not rewrite the graders.
            {"name": "course", "mountPath": C.GRADER_ROOT, "readOnly": True},
            {"name": "tmp", "mountPath": C.TMP_DIR},
            {"name": "credentials", "mountPath": C.CREDENTIALS_DIR, "readOnly": True},
        ],
    }
    fetch = {
        "name": "fetch-course",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["xqueue-grader"],
        "args": ["fetch-course"],
        "env": fetch_env,
        "resources": copy.deepcopy(resources),
        "securityContext": _container_security(),
        "volumeMounts": fetch_mounts,
    }
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec),
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [fetch],
        "containers": [grader],
        "volumes": volumes,
    }
    if spec.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.runtime_class_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _metadata(owner, names.deployment),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner)},
            # No pod is taken away before its replacement is Ready: graders drain, they do not
            # hand work over, so a rollout must never drop below the current capacity.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": common_labels(owner),
                             "annotations": {C.ANNOTATION_CONFIG_HASH: config_hash(spec)}},
                "spec": pod_spec,
            },
        },
    }


def build_objects(owner: Owner, spec: CourseGraderSpec, replicas: int,
                  config: OperatorConfig) -> dict[str, dict[str, Any]]:
    """Every applied object keyed by kind (the provisioned Secret is handled separately: its password
    is generated once and must never be re-rendered)."""
    objects = {
        "ServiceAccount": build_service_account(owner),
        "ConfigMap": build_config_map(owner, spec),
        "Deployment": build_deployment(owner, spec, replicas),
    }
    if spec.network_policy.enabled:
        objects["NetworkPolicy"] = build_network_policy(owner, spec, config)
    return objects
