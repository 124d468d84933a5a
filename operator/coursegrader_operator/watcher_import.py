"""Turn an xqueue-watcher configuration into CourseGrader objects (pure: no I/O).

xqueue-watcher reads every ``*.json`` file of its ``conf.d`` folder; each maps a queue name to
``SERVER`` + ``AUTH`` (or ``SERVER_REF``, a name in ``xqueue_servers.json``), ``CONNECTIONS`` (polling
threads, each grading one submission at a time) and ``HANDLERS`` (the classes that grade). A
``codejail.json`` (in the folder or next to it) sets the sandbox limits of ``JailedGrader``.

What maps:

* ``xqueue_watcher.jailedgrader.JailedGrader``: the grader image runs the same gradelib pipeline,
  so the queue becomes a CourseGrader whose ``repo.subPath`` is ``grader_root`` relative to where the
  course repository was checked out on the watcher host. CodeJail limits become ``spec.sandbox``.
* ``CONNECTIONS``: the watcher's concurrent gradings. ``slots`` (per pod) and ``minReplicas`` keep
  that capacity when the queue is busy; ``maxReplicas`` allows four times as much under a burst.
* Credentials: never copied. The CourseGrader names a Secret (one per ``SERVER_REF``, else one per
  queue) and the report says how to create it; or ``provision`` lets the operator make an account.

What does not map (reported, no CourseGrader written for that queue): custom handler classes (they
need a handler for the grader image's handler library), ``xqueue_watcher.grader.Grader`` (the
abstract base, only useful with custom code), ``ContainerGrader`` (a course image with its own
entrypoint; convertible on request when that image only runs the standard Python pipeline), queues
with no or several handlers. Unknown keys and settings that have no equivalent are listed as notes.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from . import spec as S

JAILED = "xqueue_watcher.jailedgrader.JailedGrader"
CONTAINER = "xqueue_watcher.containergrader.ContainerGrader"
BASE_GRADER = "xqueue_watcher.grader.Grader"

# Files of a watcher config folder that are not queue definitions.
SPECIAL_FILES = frozenset({"logging.json", "codejail.json", "xqwatcher.json", "xqueue_servers.json"})

QUEUE_KEYS = frozenset({"SERVER", "SERVER_REF", "AUTH", "CONNECTIONS", "HANDLERS", "NAME_OVERRIDE", "CLASS"})
HANDLER_KEYS = frozenset({"HANDLER", "KWARGS", "CODEJAIL", "SANDBOX"})
# KWARGS of the built-in handlers that are understood (mapped or deliberately irrelevant).
JAILED_KWARGS = frozenset({"grader_root", "codejail_python", "fork_per_item", "logger_name"})
CONTAINER_KWARGS = frozenset({
    "grader_root", "image", "backend", "namespace", "cpu_limit", "memory_limit", "timeout",
    "docker_host_grader_root", "image_pull_policy", "poll_image_digest", "digest_poll_interval",
    "fork_per_item", "logger_name",
})

# A pod with more slots than this mostly queues on its own CPU; more pods spread over nodes instead.
MAX_SLOTS_PER_POD = 4
BURST_FACTOR = 4
MIN_MAX_REPLICAS = 4
MIB = 1024 * 1024


@dataclass(frozen=True)
class ImportOptions:
    """How the watcher's world maps onto the cluster (the parts conf.d does not say)."""

    repo_url: str
    repo_ref: str = ""
    # Path on the watcher host where the course repository was checked out; grader_root values
    # under it become repo.subPath. Empty: subPath stays empty and a note asks to set it.
    repo_root: str = ""
    repo_credentials_secret: str = ""
    namespace: str = ""
    # XQueue URL for spec.server.url. Empty with keep_server_url False: left out, so the operator's
    # default (the new server) applies.
    server_url: str = ""
    keep_server_url: bool = False
    provision: bool = False
    # Convert ContainerGrader queues to the built-in pipeline (only right when the course image runs
    # the standard Python grader_support pipeline on graders that are also in the repository).
    container_as_pipeline: bool = False
    image: str = ""


@dataclass(frozen=True)
class SecretToCreate:
    """A Secret the CourseGraders reference: name, the account's username (never the password)."""

    name: str
    username: str
    server: str
    used_by: tuple[str, ...]


@dataclass(frozen=True)
class ConvertedQueue:
    queue: str
    source: str
    obj: dict[str, Any]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class UnmappedQueue:
    queue: str
    source: str
    reasons: tuple[str, ...]


@dataclass
class ImportResult:
    converted: list[ConvertedQueue] = field(default_factory=list)
    unmapped: list[UnmappedQueue] = field(default_factory=list)
    secrets: list[SecretToCreate] = field(default_factory=list)
    # Problems not tied to one queue (a file that is not a JSON object, a missing SERVER_REF file...).
    warnings: list[str] = field(default_factory=list)


class WatcherConfigError(ValueError):
    """The input cannot be read as an xqueue-watcher configuration at all."""


def resource_name(queue: str, taken: set[str]) -> str:
    """A CourseGrader name (DNS label, <= 49 characters) derived from a queue name, unique in `taken`.

    Queue names allow upper case and ``_.:+@``; when the plain lower-case form is not the queue name
    itself, a short hash of the queue keeps two queues that differ only in those characters apart.
    """
    base = re.sub(r"[^a-z0-9]+", "-", queue.lower()).strip("-") or "queue"
    exact = base == queue
    name = base[: S.MAX_NAME_LENGTH]
    if not exact or name in taken or len(base) > S.MAX_NAME_LENGTH:
        digest = hashlib.sha256(queue.encode()).hexdigest()[:6]
        name = f"{base[: S.MAX_NAME_LENGTH - 7].rstrip('-')}-{digest}"
    counter = 2
    candidate = name
    while candidate in taken:  # two queues with the same hash prefix: practically never, still handled
        suffix = f"-{counter}"
        candidate = f"{name[: S.MAX_NAME_LENGTH - len(suffix)]}{suffix}"
        counter += 1
    taken.add(candidate)
    return candidate


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "default"


def scaling_for(connections: int) -> tuple[int, dict[str, Any]]:
    """(slots, scaling) keeping the watcher's steady capacity and allowing a burst above it."""
    connections = max(1, connections)
    slots = min(connections, MAX_SLOTS_PER_POD)
    min_replicas = math.ceil(connections / slots)
    max_replicas = min(max(MIN_MAX_REPLICAS, BURST_FACTOR * min_replicas), S.BOUNDS["scaling.maxReplicas"][1])
    return slots, {"minReplicas": min_replicas, "maxReplicas": max_replicas}


def _clamp(path: str, value: int, notes: list[str], source: str) -> int:
    lo, hi = S.BOUNDS[path]
    if value < lo or value > hi:
        clamped = min(max(value, lo), hi)
        notes.append(f"{source} = {value} is outside the CourseGrader range [{lo}, {hi}]: using {clamped}")
        return clamped
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def sandbox_from_codejail(limits: Mapping[str, Any], notes: list[str], origin: str) -> dict[str, int]:
    """CodeJail limits (CPU s, REALTIME s, VMEM bytes, FSIZE bytes, NPROC) -> spec.sandbox fields."""
    mapping = {
        "CPU": ("sandbox.cpuSeconds", "cpuSeconds", 1),
        "REALTIME": ("sandbox.wallSeconds", "wallSeconds", 1),
        "VMEM": ("sandbox.memoryMB", "memoryMB", MIB),
        "FSIZE": ("sandbox.fileSizeKB", "fileSizeKB", 1024),
        "NPROC": ("sandbox.processes", "processes", 1),
    }
    out: dict[str, int] = {}
    for key, raw in limits.items():
        if key not in mapping:
            notes.append(f"{origin}: CodeJail limit {key} has no CourseGrader equivalent (ignored)")
            continue
        path, field_name, unit = mapping[key]
        number = _number(raw)
        if number is None or number < 0:
            notes.append(f"{origin}: CodeJail limit {key}={raw!r} is not a number (ignored)")
            continue
        if number == 0 and key != "FSIZE":
            # CodeJail treats 0 as "no limit"; the sandbox always has one, so keep its default.
            notes.append(f"{origin}: CodeJail limit {key}=0 (unlimited) -> the CourseGrader default applies")
            continue
        value = max(1, math.ceil(number / unit)) if key != "FSIZE" else math.ceil(number / unit)
        out[field_name] = _clamp(path, value, notes, f"{origin}: {key}")
    return out


def _quantity_mb(text: str) -> int | None:
    """Kubernetes memory quantity ("256Mi", "1G", "512000000") -> MiB, or None."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|[kmgt])?", text.strip())
    if not match:
        return None
    number = float(match.group(1))
    unit = match.group(2) or ""
    factors = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
               "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "Ti": 1024 * 1024 * MIB}
    factor = factors.get(unit) or factors.get(unit.upper())
    if factor is None:
        return None
    return max(1, math.ceil(number * factor / MIB))


def _sub_path(grader_root: str, options: ImportOptions, notes: list[str]) -> tuple[str, str | None]:
    """(subPath, problem): grader_root relative to the repository checkout on the watcher host."""
    if not grader_root:
        return "", "the handler has no grader_root"
    if not options.repo_root:
        notes.append(f"grader_root {grader_root!r}: set spec.repo.subPath to its folder inside the repository "
                     "(or run again with --repo-root)")
        return "", None
    root = posixpath.normpath(options.repo_root)
    if grader_root.startswith("/") or not root.startswith("/"):
        # Both absolute, or both relative to the watcher's working directory.
        path = posixpath.normpath(grader_root)
    else:
        path = posixpath.normpath(posixpath.join(root, grader_root))
        notes.append(f"relative grader_root {grader_root!r} taken as relative to --repo-root")
    if path == root:
        return "", None
    if not path.startswith(root.rstrip("/") + "/"):
        return "", f"grader_root {grader_root!r} is not inside --repo-root {options.repo_root!r}"
    return posixpath.relpath(path, root), None


@dataclass(frozen=True)
class _Server:
    url: str
    username: str
    secret_key: str  # identity of the credentials: which Secret the CourseGrader names


def _resolve_server(queue: str, conf: Mapping[str, Any], servers: Mapping[str, Any] | None,
                    reasons: list[str]) -> _Server:
    ref = conf.get("SERVER_REF")
    if ref is not None:
        if "SERVER" in conf or "AUTH" in conf:
            reasons.append("SERVER_REF and SERVER/AUTH are both set (xqueue-watcher refuses this too)")
        if not isinstance(ref, str) or not ref:
            reasons.append(f"SERVER_REF must be a name, got {ref!r}")
            return _Server("", "", "")
        if servers is None:
            reasons.append(f"SERVER_REF {ref!r} needs xqueue_servers.json, which was not found")
            return _Server("", "", f"ref:{ref}")
        entry = servers.get(ref)
        if not isinstance(entry, Mapping):
            reasons.append(f"SERVER_REF {ref!r} is not defined in xqueue_servers.json")
            return _Server("", "", f"ref:{ref}")
        return _Server(str(entry.get("SERVER") or ""), _auth_username(entry.get("AUTH"), reasons), f"ref:{ref}")
    username = _auth_username(conf.get("AUTH"), reasons)
    return _Server(str(conf.get("SERVER") or ""), username, f"queue:{queue}")


def _auth_username(auth: Any, reasons: list[str]) -> str:
    if auth is None:
        return ""
    if isinstance(auth, Sequence) and not isinstance(auth, str) and len(auth) == 2:
        user = auth[0]
        return user if isinstance(user, str) else ""
    # Say what is wrong without echoing the value: it may hold the password.
    reasons.append("AUTH must be a [username, password] list")
    return ""


def _convert_queue(key: str, conf: Mapping[str, Any], source: str, *, options: ImportOptions,
                   servers: Mapping[str, Any] | None, codejail: Mapping[str, Any] | None,
                   taken: set[str], secrets: dict[str, dict[str, Any]]) -> ConvertedQueue | UnmappedQueue:
    reasons: list[str] = []
    notes: list[str] = []
    queue = conf.get("NAME_OVERRIDE") or key
    if not isinstance(queue, str) or not S.QUEUE_NAME_RE.match(queue):
        return UnmappedQueue(str(key), source, (f"queue name {queue!r} is not a valid XQueue queue name",))
    if queue != key:
        notes.append(f"NAME_OVERRIDE: pulls queue {queue!r} (configured under {key!r})")
    for unknown in sorted(set(conf) - QUEUE_KEYS):
        notes.append(f"unknown key {unknown!r} ignored")
    if conf.get("CLASS"):
        notes.append(f"CLASS {conf['CLASS']!r} ignored: the grader daemon has its own concurrency (slots)")

    server = _resolve_server(key, conf, servers, reasons)
    connections = conf.get("CONNECTIONS", 1)
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        reasons.append(f"CONNECTIONS must be a positive integer, got {connections!r}")
        connections = 1

    handlers = conf.get("HANDLERS")
    if not isinstance(handlers, list) or not handlers:
        reasons.append("no HANDLERS: nothing grades this queue")
        return UnmappedQueue(queue, source, tuple(reasons))
    if len(handlers) > 1:
        names = [h.get("HANDLER") if isinstance(h, Mapping) else h for h in handlers]
        reasons.append(f"{len(handlers)} handlers {names!r}: a CourseGrader runs one pipeline per queue")
        return UnmappedQueue(queue, source, tuple(reasons))
    handler = handlers[0]
    if not isinstance(handler, Mapping) or not isinstance(handler.get("HANDLER"), str):
        return UnmappedQueue(queue, source, (*reasons, "the handler has no HANDLER class name"))
    cls = handler["HANDLER"]
    kwargs = handler.get("KWARGS") or {}
    if not isinstance(kwargs, Mapping):
        return UnmappedQueue(queue, source, (*reasons, "KWARGS must be an object"))
    for unknown in sorted(set(handler) - HANDLER_KEYS):
        notes.append(f"handler key {unknown!r} ignored")
    if handler.get("SANDBOX"):
        notes.append("SANDBOX (old sandbox python) ignored: the grader image's own sandbox runs student code")

    sandbox: dict[str, int] = {}
    if cls == JAILED:
        for unknown in sorted(set(kwargs) - JAILED_KWARGS):
            notes.append(f"JailedGrader KWARGS {unknown!r} ignored")
        jail = handler.get("CODEJAIL")
        limits: Any = None
        if isinstance(jail, Mapping) and jail.get("limits") is not None:
            limits, origin = jail.get("limits"), "CODEJAIL"
        elif codejail:
            jail_name = str(kwargs.get("codejail_python") or "python")
            entry = codejail.get(jail_name)
            if isinstance(entry, Mapping):
                limits, origin = entry.get("limits"), f"codejail.json[{jail_name}]"
        if isinstance(limits, Mapping):
            sandbox = sandbox_from_codejail(limits, notes, origin)
        elif limits is not None:
            notes.append("CodeJail limits must be an object (ignored)")
    elif cls == CONTAINER:
        if not options.container_as_pipeline:
            image = kwargs.get("image")
            reasons.append(
                f"ContainerGrader (image {image!r}, backend {kwargs.get('backend', 'kubernetes')!r}) runs the "
                "course's own container per submission; the grader image runs the Python gradelib "
                "pipeline from the repository instead. If that image only runs the standard "
                "grader_support pipeline on graders that are also in the repository, convert it with "
                "--container-as-pipeline; otherwise write a custom handler (grader_image/README.md)")
            return UnmappedQueue(queue, source, tuple(reasons))
        for unknown in sorted(set(kwargs) - CONTAINER_KWARGS):
            notes.append(f"ContainerGrader KWARGS {unknown!r} ignored")
        notes.append(f"ContainerGrader image {kwargs.get('image')!r} is not used: graders come from the repository")
        timeout = _number(kwargs.get("timeout"))
        if timeout is not None and timeout > 0:
            sandbox["wallSeconds"] = _clamp("sandbox.wallSeconds", math.ceil(timeout), notes, "timeout")
        memory = kwargs.get("memory_limit")
        if isinstance(memory, str) and (mb := _quantity_mb(memory)) is not None:
            sandbox["memoryMB"] = _clamp("sandbox.memoryMB", mb, notes, "memory_limit")
        elif memory is not None:
            notes.append(f"memory_limit {memory!r} is not a memory quantity (ignored)")
        if kwargs.get("cpu_limit"):
            notes.append(f"cpu_limit {kwargs['cpu_limit']!r}: a run is limited by sandbox.cpuSeconds "
                         "(CPU time), pods by spec.resources")
    elif cls == BASE_GRADER:
        reasons.append(f"{BASE_GRADER} is the abstract base class: grading comes from custom code "
                       f"(gradepy {kwargs.get('gradepy')!r}); port it to a custom handler (grader_image/README.md)")
        return UnmappedQueue(queue, source, tuple(reasons))
    else:
        reasons.append(f"custom handler {cls!r}: port it to the grader image's handler library "
                       "(grader_image/README.md, 'Custom handlers')")
        return UnmappedQueue(queue, source, tuple(reasons))

    grader_root = kwargs.get("grader_root")
    sub_path, problem = _sub_path(grader_root if isinstance(grader_root, str) else "", options, notes)
    if problem:
        reasons.append(problem)
    if reasons:
        return UnmappedQueue(queue, source, tuple(reasons))

    name = resource_name(queue, taken)
    slots, scaling = scaling_for(connections)
    spec: dict[str, Any] = {"queue": queue, "server": {}, "repo": {"url": options.repo_url}}
    server_url = options.server_url or (server.url.rstrip("/") if options.keep_server_url else "")
    if server_url:
        spec["server"]["url"] = server_url
    if server.url and not options.keep_server_url:
        notes.append(f"the watcher pulled from {server.url}; the graders use "
                     f"{options.server_url or 'the operator default XQueue URL'}")
    if options.provision:
        spec["server"]["provision"] = True
        if server.username:
            notes.append(f"provision: the operator creates a grader account (the watcher used {server.username!r})")
    else:
        secret_name = (f"xqueue-grader-{_slug(server.secret_key[4:])}" if server.secret_key.startswith("ref:")
                       else f"{name}-xqueue")
        spec["server"]["credentialsSecretRef"] = {"name": secret_name}
        entry = secrets.setdefault(secret_name, {"username": server.username, "server": server.url, "used_by": []})
        entry["used_by"].append(name)
        if not server.username:
            notes.append("no AUTH in the watcher config: put the grader account's username into "
                         f"Secret {secret_name}")
    if options.repo_ref:
        spec["repo"]["ref"] = options.repo_ref
    if sub_path:
        spec["repo"]["subPath"] = sub_path
    if options.repo_credentials_secret:
        spec["repo"]["credentialsSecretRef"] = {"name": options.repo_credentials_secret}
    if options.image:
        spec["image"] = options.image
    spec["slots"] = slots
    if sandbox:
        spec["sandbox"] = sandbox
    wall = sandbox.get("wallSeconds", S.DEFAULTS["sandbox"]["wallSeconds"])
    if 2 * wall > S.DEFAULTS["drainSeconds"]:
        # A scale-down must let a running submission (staff answer + student run) finish.
        spec["drainSeconds"] = _clamp("drainSeconds", 2 * wall, notes, "drainSeconds (2 x wallSeconds)")
    spec["scaling"] = scaling
    metadata: dict[str, Any] = {"name": name,
                                "labels": {C.LABEL_PART_OF: "xqueue-k8s"},
                                "annotations": {f"{C.GROUP}/imported-from": f"xqueue-watcher {source}"}}
    if options.namespace:
        metadata["namespace"] = options.namespace
    obj = {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": metadata, "spec": spec}
    return ConvertedQueue(queue, source, obj, tuple(notes))


def convert(queue_files: Mapping[str, Any], options: ImportOptions, *,
            servers: Mapping[str, Any] | None = None,
            codejail: Mapping[str, Any] | None = None) -> ImportResult:
    """Convert parsed conf.d files ({file name: JSON value}) into CourseGraders and a report.

    Files are taken in name order, like xqueue-watcher does not guarantee but most setups assume; a
    queue defined twice keeps its first definition and the second is reported.
    """
    if not options.repo_url:
        raise WatcherConfigError("the course repository URL is required (the watcher config does not name it)")
    result = ImportResult()
    taken: set[str] = set()
    seen: dict[str, str] = {}
    secrets: dict[str, dict[str, Any]] = {}
    if servers is not None and not isinstance(servers, Mapping):
        result.warnings.append("xqueue_servers.json is not a JSON object (ignored)")
        servers = None
    if codejail is not None and not isinstance(codejail, Mapping):
        result.warnings.append("codejail.json is not a JSON object (ignored)")
        codejail = None
    for source in sorted(queue_files):
        content = queue_files[source]
        if not isinstance(content, Mapping):
            result.warnings.append(f"{source}: not a JSON object of queues (skipped)")
            continue
        for key in content:
            conf = content[key]
            if not isinstance(conf, Mapping):
                result.unmapped.append(UnmappedQueue(str(key), source, ("the queue's value is not an object",)))
                continue
            queue = conf.get("NAME_OVERRIDE") or key
            if queue in seen:
                result.unmapped.append(UnmappedQueue(str(queue), source, (
                    f"queue already defined in {seen[queue]}: one CourseGrader per queue",)))
                continue
            seen[str(queue)] = source
            item = _convert_queue(str(key), conf, source, options=options, servers=servers, codejail=codejail,
                                  taken=taken, secrets=secrets)
            if isinstance(item, ConvertedQueue):
                result.converted.append(item)
            else:
                result.unmapped.append(item)
    result.secrets = [SecretToCreate(name, str(v["username"]), str(v["server"]), tuple(v["used_by"]))
                      for name, v in sorted(secrets.items())]
    return result


def secret_command(secret: SecretToCreate, namespace: str = "") -> str:
    """The kubectl command that creates a referenced Secret; the password stays a shell variable."""
    ns = f"-n {namespace} " if namespace else ""
    user = secret.username or "GRADER_USERNAME"
    return (f"kubectl {ns}create secret generic {secret.name} --from-literal=username={user} "
            '--from-literal=password="$GRADER_PASSWORD"')


def report_lines(result: ImportResult, namespace: str = "") -> list[str]:
    """A human-readable report: what was written, what to create, what could not be mapped."""
    lines: list[str] = []
    for item in result.converted:
        lines.append(f"converted: queue {item.queue!r} ({item.source}) -> CourseGrader {item.obj['metadata']['name']}")
        lines.extend(f"    note: {note}" for note in item.notes)
    if result.secrets:
        lines.append("create these Secrets before applying (the password is the account's on the new XQueue "
                     "server; it is not copied from the watcher config):")
        for secret in result.secrets:
            lines.append(f"    {secret_command(secret, namespace)}    # used by {', '.join(secret.used_by)}")
    for unmapped in result.unmapped:
        lines.append(f"NOT CONVERTED: queue {unmapped.queue!r} ({unmapped.source})")
        lines.extend(f"    - {reason}" for reason in unmapped.reasons)
    lines.extend(f"warning: {w}" for w in result.warnings)
    lines.append(f"{len(result.converted)} converted, {len(result.unmapped)} not converted")
    return lines
