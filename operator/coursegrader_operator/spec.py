"""The CourseGrader spec as a typed, validated value (pure: no I/O).

The CRD's structural schema already rejects most bad input at the API server. The operator still
parses and validates here because objects can predate a schema change, and because some rules need
operator-level defaults (server URL, image). A spec that fails here is reported in status with a
SpecValid=False condition; it never raises out of a handler and never crash-loops the operator.

`DEFAULTS` is the single source of the defaults; tests check that crds/ carries the same values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+@-]{0,127}$")
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,150}$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
# Where a course repository may come from (the CRD carries the same expressions in a CEL rule):
# a remote git URL with a host, scp-like user@host:path, or a repository baked into the grader image
# under /opt/ or /srv/ (a plain path or a file:// URL). Anything else cannot be cloned (no scheme,
# spaces, shell syntax) or reads the image's system files (file:///etc/...).
REPO_REMOTE_RE = re.compile(
    r"^(https?|ssh|git)://([A-Za-z0-9._~%+-]+@)?([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r"(:[0-9]{1,5})?(/[!-~]*)?$")
REPO_SCP_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[A-Za-z0-9_.~/][!-~]*$")
REPO_IMAGE_PATH_RE = re.compile(r"^(file://)?/(opt|srv)(/[A-Za-z0-9._+@-]+)+/?$")
REPO_DOTDOT_RE = re.compile(r"(^|/)[.][.](/|$)")
IMAGE_REPO_ROOTS = ("/opt/", "/srv/")
QUANTITY_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?$")
# Longest CourseGrader name: derived names add "-grader-config" and the name is a label value (<=63).
MAX_NAME_LENGTH = 49

DEFAULTS: dict[str, Any] = {
    "server": {"provision": False, "credentialsSecretRef": {"usernameKey": "username",
                                                            "passwordKey": "password"}},
    "repo": {"subPath": ""},
    "imagePullPolicy": "IfNotPresent",
    "slots": 2,
    "drainSeconds": 60,
    "sandbox": {
        "cpuSeconds": 5, "wallSeconds": 10, "memoryMB": 256, "processes": 64,
        "fileSizeKB": 1024, "outputKB": 64, "openFiles": 64,
    },
    "scaling": {
        "enabled": True, "minReplicas": 1, "maxReplicas": 10, "targetPerSlot": 1,
        "scaleUpWindowSeconds": 0, "scaleDownWindowSeconds": 120, "allowScaleToZero": False,
    },
    "storage": {"courseSizeLimit": "512Mi", "tmpSizeLimit": "1Gi"},
    "networkPolicy": {"enabled": True},
}

# Inclusive bounds, mirrored in the CRD schema (minimum/maximum).
BOUNDS: dict[str, tuple[int, int]] = {
    "slots": (1, 64),
    "drainSeconds": (5, 86400),
    "sandbox.cpuSeconds": (1, 3600),
    "sandbox.wallSeconds": (1, 7200),
    "sandbox.memoryMB": (16, 65536),
    "sandbox.processes": (1, 4096),
    "sandbox.fileSizeKB": (0, 10485760),
    "sandbox.outputKB": (1, 1048576),
    "sandbox.openFiles": (8, 65536),
    "scaling.minReplicas": (0, 1000),
    "scaling.maxReplicas": (1, 1000),
    "scaling.scaleUpWindowSeconds": (0, 3600),
    "scaling.scaleDownWindowSeconds": (0, 86400),
}


class SpecError(ValueError):
    """The spec cannot be turned into managed objects; `problems` are human-readable lines."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class OperatorDefaults:
    """Operator-level fallbacks for fields a CourseGrader may leave out."""

    xqueue_url: str = ""
    grader_image: str = ""


@dataclass(frozen=True)
class ServerSpec:
    url: str
    provision: bool
    credentials_secret: str | None
    username_key: str
    password_key: str
    grader_username: str | None

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        if parts.port:
            return parts.port
        return 443 if parts.scheme == "https" else 80

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


@dataclass(frozen=True)
class RepoSpec:
    url: str
    ref: str
    sub_path: str
    credentials_secret: str | None

    @property
    def port(self) -> int | None:
        """TCP port the init container needs for the clone; None for local paths (no network)."""
        if "://" not in self.url:
            # scp-like "git@host:org/repo.git" is SSH; a plain path is local.
            return 22 if re.match(r"^[^/@]+@[^:/]+:", self.url) else None
        parts = urlsplit(self.url)
        if parts.scheme == "file":
            return None
        if parts.port:
            return parts.port
        return {"https": 443, "http": 80, "ssh": 22, "git": 9418}.get(parts.scheme, 443)


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int
    wall_seconds: int
    memory_mb: int
    processes: int
    file_size_kb: int
    output_kb: int
    open_files: int


@dataclass(frozen=True)
class ScalingPolicy:
    enabled: bool
    min_replicas: int
    max_replicas: int
    target_per_slot: float
    scale_up_window: float
    scale_down_window: float
    allow_scale_to_zero: bool


@dataclass(frozen=True)
class NetworkPolicySpec:
    enabled: bool
    xqueue_peers: tuple[Mapping[str, Any], ...]
    repo_peers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class CourseGraderSpec:
    queue: str
    server: ServerSpec
    repo: RepoSpec
    image: str
    image_pull_policy: str
    image_pull_secrets: tuple[str, ...]
    slots: int
    resources: Mapping[str, Any]
    sandbox: SandboxLimits
    drain_seconds: int
    scaling: ScalingPolicy
    course_size_limit: str
    tmp_size_limit: str
    runtime_class_name: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...]
    network_policy: NetworkPolicySpec


def _section(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A spec section merged over its defaults (the CRD defaults them too; this covers old objects)."""
    value = raw.get(key)
    merged: dict[str, Any] = dict(DEFAULTS.get(key, {}))
    if isinstance(value, Mapping):
        merged.update(value)
    return merged


class _Checker:
    """Collects every problem instead of stopping at the first, so status lists them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def integer(self, path: str, value: Any) -> int:
        lo, hi = BOUNDS[path]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"spec.{path} must be an integer")
            return lo
        if not lo <= value <= hi:
            self.problems.append(f"spec.{path} must be between {lo} and {hi}, got {value}")
        return value

    def text(self, path: str, value: Any, *, required: bool = False) -> str:
        if value is None or value == "":
            if required:
                self.problems.append(f"spec.{path} is required")
            return ""
        if not isinstance(value, str):
            self.problems.append(f"spec.{path} must be a string")
            return ""
        return value

    def quantity(self, path: str, value: Any) -> str:
        text = str(value)
        if not QUANTITY_RE.match(text):
            self.problems.append(f"spec.{path} is not a valid quantity: {text!r}")
        return text


def _parse_server(raw: Mapping[str, Any], defaults: OperatorDefaults, c: _Checker) -> ServerSpec:
    server = _section(raw, "server")
    url = c.text("server.url", server.get("url")) or defaults.xqueue_url
    if not url:
        c.problems.append("spec.server.url is required (the operator has no default XQueue URL)")
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            c.problems.append(f"spec.server.url must be an http(s) URL, got {url!r}")
        elif url.endswith("/"):
            c.problems.append("spec.server.url must not end with a slash")
    provision = server.get("provision") is True
    ref = server.get("credentialsSecretRef")
    ref = dict(ref) if isinstance(ref, Mapping) else {}
    secret = ref.get("name") or None
    if secret is not None and not DNS_SUBDOMAIN_RE.match(str(secret)):
        c.problems.append(f"spec.server.credentialsSecretRef.name is not a valid name: {secret!r}")
    if provision and secret:
        c.problems.append("spec.server: set either credentialsSecretRef or provision, not both")
    if not provision and not secret:
        c.problems.append("spec.server: set credentialsSecretRef.name, or provision: true")
    keys = DEFAULTS["server"]["credentialsSecretRef"]
    username_key = str(ref.get("usernameKey") or keys["usernameKey"])
    password_key = str(ref.get("passwordKey") or keys["passwordKey"])
    for key in (username_key, password_key):
        if not SECRET_KEY_RE.match(key):
            c.problems.append(f"spec.server.credentialsSecretRef key is not a valid Secret key: {key!r}")
    username = server.get("graderUsername") or None
    if username is not None and not USERNAME_RE.match(str(username)):
        c.problems.append(f"spec.server.graderUsername is not a valid username: {username!r}")
    return ServerSpec(url=url, provision=provision, credentials_secret=secret, username_key=username_key,
                      password_key=password_key, grader_username=username)


def _parse_repo(raw: Mapping[str, Any], c: _Checker) -> RepoSpec:
    repo = _section(raw, "repo")
    url = c.text("repo.url", repo.get("url"), required=True)
    if url and (REPO_DOTDOT_RE.search(url) or not (
            REPO_REMOTE_RE.match(url) or REPO_SCP_RE.match(url) or REPO_IMAGE_PATH_RE.match(url))):
        c.problems.append(
            "spec.repo.url must be an https://, http://, ssh:// or git:// URL with a host, user@host:path, "
            f"or a repository baked into the grader image under {' or '.join(IMAGE_REPO_ROOTS)} "
            f"(a path or file:// URL); got {url[:200]!r}")
    sub_path = c.text("repo.subPath", repo.get("subPath"))
    if sub_path.startswith("/") or ".." in sub_path.split("/"):
        c.problems.append("spec.repo.subPath must be a relative path inside the repository")
    ref = repo.get("credentialsSecretRef")
    secret = ref.get("name") if isinstance(ref, Mapping) else None
    if secret is not None and not DNS_SUBDOMAIN_RE.match(str(secret)):
        c.problems.append(f"spec.repo.credentialsSecretRef.name is not a valid name: {secret!r}")
    return RepoSpec(url=url, ref=c.text("repo.ref", repo.get("ref")), sub_path=sub_path,
                    credentials_secret=secret or None)


def _parse_scaling(raw: Mapping[str, Any], c: _Checker) -> ScalingPolicy:
    s = _section(raw, "scaling")
    target = s.get("targetPerSlot")
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1000:
        c.problems.append(f"spec.scaling.targetPerSlot must be a number in (0, 1000], got {target!r}")
        target = 1
    policy = ScalingPolicy(
        enabled=s.get("enabled") is not False,
        min_replicas=c.integer("scaling.minReplicas", s.get("minReplicas")),
        max_replicas=c.integer("scaling.maxReplicas", s.get("maxReplicas")),
        target_per_slot=float(target),
        scale_up_window=c.integer("scaling.scaleUpWindowSeconds", s.get("scaleUpWindowSeconds")),
        scale_down_window=c.integer("scaling.scaleDownWindowSeconds", s.get("scaleDownWindowSeconds")),
        allow_scale_to_zero=s.get("allowScaleToZero") is True,
    )
    if policy.min_replicas > policy.max_replicas:
        c.problems.append(
            f"spec.scaling.minReplicas ({policy.min_replicas}) must not exceed maxReplicas "
            f"({policy.max_replicas})")
    if policy.min_replicas == 0 and not policy.allow_scale_to_zero:
        c.problems.append("spec.scaling.minReplicas is 0 but allowScaleToZero is false")
    return policy


def _parse_sandbox(raw: Mapping[str, Any], c: _Checker) -> SandboxLimits:
    s = _section(raw, "sandbox")
    return SandboxLimits(
        cpu_seconds=c.integer("sandbox.cpuSeconds", s.get("cpuSeconds")),
        wall_seconds=c.integer("sandbox.wallSeconds", s.get("wallSeconds")),
        memory_mb=c.integer("sandbox.memoryMB", s.get("memoryMB")),
        processes=c.integer("sandbox.processes", s.get("processes")),
        file_size_kb=c.integer("sandbox.fileSizeKB", s.get("fileSizeKB")),
        output_kb=c.integer("sandbox.outputKB", s.get("outputKB")),
        open_files=c.integer("sandbox.openFiles", s.get("openFiles")),
    )


def _parse_resources(raw: Any, c: _Checker) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        c.problems.append("spec.resources must be an object")
        return {}
    out: dict[str, Any] = {}
    for part in ("requests", "limits"):
        values = raw.get(part)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            c.problems.append(f"spec.resources.{part} must be an object")
            continue
        out[part] = {str(k): c.quantity(f"resources.{part}.{k}", v) for k, v in values.items()}
    return out


def _peers(value: Any, path: str, c: _Checker) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, Mapping) for p in value):
        c.problems.append(f"spec.{path} must be a list of NetworkPolicyPeer objects")
        return ()
    return tuple(dict(p) for p in value)


def parse_spec(raw: Mapping[str, Any] | None,
               defaults: OperatorDefaults = OperatorDefaults()) -> CourseGraderSpec:
    """Turn `.spec` into a CourseGraderSpec, or raise SpecError listing every problem."""
    raw = raw or {}
    c = _Checker()
    queue = c.text("queue", raw.get("queue"), required=True)
    if queue and not QUEUE_NAME_RE.match(queue):
        c.problems.append(f"spec.queue is not a valid queue name: {queue!r}")
    server = _parse_server(raw, defaults, c)
    repo = _parse_repo(raw, c)
    image = c.text("image", raw.get("image")) or defaults.grader_image
    if not image:
        c.problems.append("spec.image is required (the operator has no default grader image)")
    pull_policy = raw.get("imagePullPolicy") or DEFAULTS["imagePullPolicy"]
    if pull_policy not in ("Always", "IfNotPresent", "Never"):
        c.problems.append(f"spec.imagePullPolicy must be Always, IfNotPresent or Never, got {pull_policy!r}")
    pull_secrets = raw.get("imagePullSecrets") or []
    slots = c.integer("slots", raw.get("slots", DEFAULTS["slots"]))
    sandbox = _parse_sandbox(raw, c)
    drain = c.integer("drainSeconds", raw.get("drainSeconds", DEFAULTS["drainSeconds"]))
    # A submission runs the student's code and the reference answer, each up to the wall limit:
    # draining for less than that would kill graders mid-job on every scale-down.
    if drain < 2 * sandbox.wall_seconds:
        c.problems.append(
            f"spec.drainSeconds ({drain}) must be at least twice sandbox.wallSeconds "
            f"({sandbox.wall_seconds}) so a scale-down never cuts a grading run short")
    storage = _section(raw, "storage")
    node_selector = raw.get("nodeSelector") or {}
    if not isinstance(node_selector, Mapping):
        c.problems.append("spec.nodeSelector must be a map of strings")
        node_selector = {}
    tolerations = raw.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        c.problems.append("spec.tolerations must be a list of objects")
        tolerations = []
    runtime_class = raw.get("runtimeClassName") or None
    if runtime_class is not None and not DNS_SUBDOMAIN_RE.match(str(runtime_class)):
        c.problems.append(f"spec.runtimeClassName is not a valid name: {runtime_class!r}")
    np = _section(raw, "networkPolicy")
    spec = CourseGraderSpec(
        queue=queue,
        server=server,
        repo=repo,
        image=image,
        image_pull_policy=str(pull_policy),
        image_pull_secrets=tuple(str(s.get("name") if isinstance(s, Mapping) else s) for s in pull_secrets),
        slots=slots,
        resources=_parse_resources(raw.get("resources"), c),
        sandbox=sandbox,
        drain_seconds=drain,
        scaling=_parse_scaling(raw, c),
        course_size_limit=c.quantity("storage.courseSizeLimit", storage.get("courseSizeLimit")),
        tmp_size_limit=c.quantity("storage.tmpSizeLimit", storage.get("tmpSizeLimit")),
        runtime_class_name=runtime_class,
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        tolerations=tuple(dict(t) for t in tolerations),
        network_policy=NetworkPolicySpec(
            enabled=np.get("enabled") is not False,
            xqueue_peers=_peers(np.get("xqueuePeers"), "networkPolicy.xqueuePeers", c),
            repo_peers=_peers(np.get("repoPeers"), "networkPolicy.repoPeers", c),
        ),
    )
    if c.problems:
        raise SpecError(c.problems)
    return spec


def validate_name(name: str) -> list[str]:
    """Problems with a CourseGrader's own name (it becomes part of several object names)."""
    if len(name) > MAX_NAME_LENGTH:
        return [f"metadata.name must be at most {MAX_NAME_LENGTH} characters"]
    if not DNS_LABEL_RE.match(name):
        return ["metadata.name must be a DNS label (lowercase letters, digits and '-')"]
    return []
