"""Names shared by the CRD, the chart, the builders and the handlers.

The API group lives under a domain derived from the project's name (xqueue-k8s.io). It deliberately
does not end in ".k8s.io": groups under k8s.io/kubernetes.io are reserved for the Kubernetes project
and need an api-approved annotation.
"""

from __future__ import annotations

GROUP = "grading.xqueue-k8s.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CourseGrader"
PLURAL = "coursegraders"
SHORT_NAME = "cg"

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

# Object kinds the operator manages, as (apiVersion, kind).
DEPLOYMENT = ("apps/v1", "Deployment")
SERVICE_ACCOUNT = ("v1", "ServiceAccount")
CONFIG_MAP = ("v1", "ConfigMap")
NETWORK_POLICY = ("networking.k8s.io/v1", "NetworkPolicy")
SECRET = ("v1", "Secret")
MANAGED_KINDS = (SERVICE_ACCOUNT, CONFIG_MAP, NETWORK_POLICY, SECRET, DEPLOYMENT)

# Condition types written to status.conditions.
COND_READY = "Ready"
COND_SPEC_VALID = "SpecValid"
COND_PROVISIONED = "Provisioned"
COND_RECONCILED = "Reconciled"
COND_SCALING_ACTIVE = "ScalingActive"
COND_SCALING_LIMITED = "ScalingLimited"
CONDITION_ORDER = (
    COND_READY, COND_SPEC_VALID, COND_PROVISIONED, COND_RECONCILED, COND_SCALING_ACTIVE,
    COND_SCALING_LIMITED,
)

# Phases shown in `kubectl get coursegraders`.
PHASE_INVALID = "Invalid"
PHASE_DEGRADED = "Degraded"
PHASE_PROVISIONING = "Provisioning"
PHASE_PROGRESSING = "Progressing"
PHASE_READY = "Ready"
PHASE_IDLE = "Idle"
