"""Names shared by the CRD, the chart, the builders and the handlers.

The API group lives under a domain derived from the project's name (xqueue-k8s.io). It deliberately
does not end in ".k8s.io": groups under k8s.io/kubernetes.io are reserved for the Kubernetes project
and need an api-approved annotation.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "grading.xqueue-k8s.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CourseGrader"
PLURAL = "coursegraders"

OPERATOR_NAME = "coursegrader-operator"
FIELD_MANAGER = OPERATOR_NAME

# Labels on every managed object. The managed-by label is also the server-side watch selector, so
# the operator never streams the cluster's unrelated Deployments/ConfigMaps/Secrets.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_OWNER = f"{GROUP}/coursegrader"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={OPERATOR_NAME}"

# Pod-template annotation carrying a digest of the grader configuration: a changed ConfigMap alone
# does not restart pods, a changed template annotation does.
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"

# Grader container layout (paths inside the pod).
GRADER_ROOT = "/grader/course"
CREDENTIALS_DIR = "/var/run/xqueue/credentials"
REPO_CREDENTIALS_DIR = "/var/run/xqueue/repo-credentials"
TMP_DIR = "/tmp"
HTTP_PORT = 8080
HTTP_PORT_NAME = "http"

# The one table of kinds the operator manages. Everything else derives from it: the REST paths
# (kube.py), the watched resources and their label selectors (handlers.py), the child names
# (resources.ObjectNames) and the kinds a verify pass reads (reconcile.py).


@dataclass(frozen=True)
class ManagedKind:
    kind: str
    api_version: str
    plural: str
    name_suffix: str  # the child is named <coursegrader>-<suffix>
    verified: bool  # read and compared on every verify pass (the Secret is checked by provisioning)

    @property
    def api_prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


MANAGED: tuple[ManagedKind, ...] = (
    ManagedKind("ServiceAccount", "v1", "serviceaccounts", "grader", verified=True),
    ManagedKind("ConfigMap", "v1", "configmaps", "grader-config", verified=True),
    ManagedKind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", "grader", verified=True),
    ManagedKind("Secret", "v1", "secrets", "grader-credentials", verified=False),
    ManagedKind("Deployment", "apps/v1", "deployments", "grader", verified=True),
)
MANAGED_BY_KIND = {m.kind: m for m in MANAGED}
VERIFIED_KINDS = tuple(m.kind for m in MANAGED if m.verified)

# Condition types written to status.conditions.
COND_READY = "Ready"
COND_SPEC_VALID = "SpecValid"
COND_PROVISIONED = "Provisioned"
COND_RECONCILED = "Reconciled"
COND_SCALING_ACTIVE = "ScalingActive"
COND_SCALING_LIMITED = "ScalingLimited"
COND_QUEUE_CONFLICT = "QueueConflict"
CONDITION_ORDER = (
    COND_READY, COND_SPEC_VALID, COND_PROVISIONED, COND_RECONCILED, COND_SCALING_ACTIVE,
    COND_SCALING_LIMITED, COND_QUEUE_CONFLICT,
)

# Phases shown in `kubectl get coursegraders`.
PHASE_INVALID = "Invalid"
PHASE_DEGRADED = "Degraded"
PHASE_PROVISIONING = "Provisioning"
PHASE_PROGRESSING = "Progressing"
PHASE_READY = "Ready"
PHASE_IDLE = "Idle"

# status.xqueue: whether the queue length could be read from the XQueue server (a printed column).
XQUEUE_CONNECTED = "Connected"
XQUEUE_UNREACHABLE = "Unreachable"
