"""The operator's moving parts: a cache of CourseGraders, a work queue, the scaler and the resync.

kopf delivers watch events (handlers.py); everything decided here comes from the pure modules
(spec, resources, drift, scaling, status). The design follows controller-runtime's rather than
kopf's timers, for two reasons:

* kopf timers and daemons put a finalizer on every object (kopf/on.py: requires_finalizer=True).
  A finalizer on CourseGraders would block namespace deletion whenever the operator is down
  (anchors.md §6.4 O6), and no clean-up here needs one: children are garbage-collected through
  ownerReferences.
* One scaler loop for all CourseGraders reads every queue on a server with one request per tick
  (GET /api/v1/queues) instead of 1,000 timers each making their own call.

Work per CourseGrader is serialised: a key is processed by one worker at a time, and requests that
arrive meanwhile are merged (full reconcile > Deployment only > status only).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import constants as C
from .config import OperatorConfig
from .drift import comparable, find_drift
from .kube import ApiError, KubeClient
from .resources import (
    ObjectNames,
    Owner,
    build_credentials_secret,
    build_deployment,
    build_objects,
    credentials_secret_name,
    grader_username,
    selector_labels,
)
from .scaling import (
    DELETION_COST_ANNOTATION,
    Decision,
    QueueLoad,
    ScaleHistory,
    clamp,
    decide,
    deletion_costs,
    initial_replicas,
)
from .spec import CourseGraderSpec, SpecError, parse_spec, validate_name
from .status import Condition, Observed, build_status, now_rfc3339, status_differs, status_patch
from .xqueue import Auth, XQueueClient, XQueueError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
PostEvent = Callable[[Mapping[str, Any], str, str, str], None]  # body, type, reason, message

FULL, DEPLOYMENT, STATUS = 4, 2, 1
MAX_ATTEMPTS = 10  # consecutive failures before a key waits for the next resync
UNREACHABLE_BACKOFF = 5.0  # seconds a server that did not answer is skipped by other courses
C_KINDS = ("ServiceAccount", "ConfigMap", "NetworkPolicy", "Deployment")
PROVISION_REFRESH = 3600.0  # seconds between re-assertions of a provisioned queue and account
FIGURES = ("queueLength", "inFlight", "oldestQueuedAgeSeconds")


def _trim_deployment(body: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if body is None:
        return None
    meta = body.get("metadata", {})
    return {"metadata": {"generation": meta.get("generation"),
                         "resourceVersion": meta.get("resourceVersion")},
            "spec": {"replicas": body.get("spec", {}).get("replicas")},
            "status": copy.deepcopy(body.get("status") or {})}


def _decode(data: Mapping[str, Any], key: str) -> str | None:
    raw = data.get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw).decode()
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class Grader:
    """What the operator remembers about one CourseGrader between events."""

    key: Key
    body: dict[str, Any]
    spec: CourseGraderSpec | None = None
    spec_error: str | None = None
    parsed_generation: int | None = None
    reconciled_generation: int | None = None
    warned_generation: int | None = None
    history: ScaleHistory = field(default_factory=ScaleHistory)
    desired_replicas: int | None = None
    applied_replicas: int | None = None  # what our last Deployment apply set
    decision: Decision | None = None
    load: QueueLoad | None = None
    metrics_error: str | None = None
    deployment: dict[str, Any] | None = None
    provisioned: Condition | None = None
    reconcile_error: str | None = None
    last_status: dict[str, Any] | None = None
    last_status_write: float = 0.0
    status_timer: bool = False
    last_scale_time: str | None = None
    seen_rv: dict[str, str] = field(default_factory=dict)
    drift: list[str] = field(default_factory=list)
    creds: Auth | None = None
    provisioned_key: tuple[int, str] | None = None  # (generation, Secret resourceVersion) provisioned
    provisioned_at: float = 0.0

    @property
    def owner(self) -> Owner:
        return Owner.from_body(self.body)

    @property
    def generation(self) -> int:
        return int(self.body.get("metadata", {}).get("generation") or 0)


def trim_coursegrader(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    keep = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
    return {
        "apiVersion": body.get("apiVersion", C.API_VERSION), "kind": body.get("kind", C.KIND),
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": copy.deepcopy(body.get("spec") or {}),
        "status": copy.deepcopy(body.get("status") or {}),
    }


class Runtime:
    def __init__(self, config: OperatorConfig, kube: KubeClient, xq: XQueueClient,
                 post_event: PostEvent | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kube = kube
        self.xq = xq
        self.graders: dict[Key, Grader] = {}
        self._post_event = post_event
        self._clock = clock
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: dict[Key, int] = {}
        self._active: set[Key] = set()
        self._attempts: dict[Key, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._admin = Auth(username=config.admin_username, password=config.admin_password,
                           token=config.admin_token)
        # Servers that did not answer at all, until when: other courses on the same server skip
        # their request for a few seconds instead of each waiting for the same connect error.
        self._unreachable: dict[str, tuple[float, str]] = {}
        # The last all-queues reading per server (admin mode), so a new CourseGrader's first status
        # already carries its queue figures instead of needing a second write one tick later.
        self._last_queues: dict[str, tuple[float, dict[str, QueueLoad]]] = {}
        self.reconciles = 0  # counters for the liveness probe and the benchmark
        self.scale_ticks = 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for i in range(self.config.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"cg-worker-{i}"))
        self._tasks.append(asyncio.create_task(self._scale_loop(), name="cg-scaler"))
        self._tasks.append(asyncio.create_task(self._resync_loop(), name="cg-resync"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.kube.close()
        await self.xq.close()

    # ---------------------------------------------------------------- events from kopf

    def coursegrader_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self._forget(key, delete_account=True)
            return
        trimmed = trim_coursegrader(body)
        g = self.graders.get(key)
        if g is not None and g.body["metadata"].get("uid") != trimmed["metadata"].get("uid"):
            # Same name, new object: nothing learned about the old one applies.
            self._forget(key)
            g = None
        if g is None:
            g = Grader(key=key, body=trimmed, last_status=trimmed["status"] or None)
            self.graders[key] = g
            self.enqueue(key, FULL)
            return
        g.body = trimmed
        g.last_status = trimmed["status"] or None
        if meta.get("deletionTimestamp"):
            return  # garbage collection takes the children; do not re-create them
        if event_type is None or g.reconciled_generation != g.generation:
            # None = initial listing (operator start or watch re-list): resync everything once.
            self.enqueue(key, FULL)

    def owned_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata", {})
        owner_name = (meta.get("labels") or {}).get(C.LABEL_OWNER)
        if not owner_name:
            return
        g = self.graders.get((meta.get("namespace", ""), owner_name))
        if g is None or g.body["metadata"].get("deletionTimestamp"):
            return
        uid = g.body["metadata"].get("uid")
        refs = meta.get("ownerReferences") or []
        if refs and not any(r.get("uid") == uid for r in refs):
            return  # left over from an earlier CourseGrader of the same name; GC removes it
        kind = body.get("kind", "")
        name = meta.get("name", "")
        if kind == "Deployment":
            old_status = (g.deployment or {}).get("status")
            g.deployment = None if event_type == "DELETED" else _trim_deployment(body)
            if g.deployment is None or g.deployment["status"] != old_status:
                self.enqueue(g.key, STATUS)
        if event_type == "DELETED":
            g.seen_rv.pop(kind, None)
            g.drift.append(f"{kind} {name} was deleted")
            self.enqueue(g.key, FULL)
            return
        rv = meta.get("resourceVersion", "")
        if g.seen_rv.get(kind) == rv:
            return  # the echo of our own write
        g.seen_rv[kind] = rv
        found = self.drift_of(g, kind, body)
        if found:
            g.drift.append(f"{kind} {name} changed at {found}")
            self.enqueue(g.key, FULL)

    def drift_of(self, g: Grader, kind: str, body: Mapping[str, Any]) -> str | None:
        """Where `body` departs from what the operator would apply, or None."""
        if g.spec is None or g.reconciled_generation != g.generation:
            return None  # a reconcile for the new spec is due anyway; do not report a spec change as drift
        owner = g.owner
        if kind == "Secret":
            # Any change to the provisioned Secret that is not our own write: the account must follow
            # it (a new password is pushed to the server; a broken Secret is regenerated).
            if g.spec.server.provision and body.get("metadata", {}).get("name") == ObjectNames.for_owner(
                    owner.name).secret:
                return ".data"
            return None
        # Replicas are compared with what the operator last applied, not with a newer decision that
        # the scaler has not applied yet: the latter is not drift, only a pending scale.
        replicas = g.applied_replicas if g.applied_replicas is not None else 0
        desired = build_objects(owner, g.spec, replicas, self.config).get(kind)
        if desired is None:
            # A kind the spec no longer wants (NetworkPolicy disabled): its presence is the drift.
            return "." if kind == "NetworkPolicy" else None
        if body.get("metadata", {}).get("name") != desired["metadata"]["name"]:
            return None
        want = comparable(desired)
        if kind == "Deployment" and g.applied_replicas is None:
            want["spec"] = {k: v for k, v in want["spec"].items() if k != "replicas"}
        return find_drift(want, body)

    def _forget(self, key: Key, delete_account: bool = False) -> None:
        g = self.graders.pop(key, None)
        self._pending.pop(key, None)
        self._attempts.pop(key, None)
        if delete_account and g is not None and g.spec is not None and g.spec.server.provision \
                and self.config.has_admin:
            # Best effort: the account is useless without its CourseGrader. The queue stays (it holds
            # submissions and their history); there is no finalizer, so a deletion while the
            # operator is down leaves the account behind.
            username = grader_username(g.owner, g.spec)
            url = self._dial_url(g.spec)
            task = asyncio.get_running_loop().create_task(self._delete_user(url, username))
            self._tasks.append(task)
            task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

    async def _delete_user(self, url: str, username: str) -> None:
        for other in self.graders.values():
            if other.spec is not None and other.spec.server.provision \
                    and grader_username(other.owner, other.spec) == username:
                return  # re-created under the same name meanwhile: the account is in use again
        try:
            await self.xq.delete_user(url, username, self._admin)
        except XQueueError as e:
            log.warning("could not delete grader account %s: %s", username, e)
        else:
            log.info("deleted grader account %s (its CourseGrader is gone)", username)

    # ---------------------------------------------------------------- work queue

    def enqueue(self, key: Key, flags: int, delay: float = 0.0) -> None:
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self.enqueue, key, flags)
            return
        if key not in self.graders:
            return
        if key in self._pending:
            self._pending[key] |= flags
            return
        self._pending[key] = flags
        if key not in self._active:
            self._queue.put_nowait(key)

    @property
    def idle(self) -> bool:
        return not self._pending and not self._active

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            flags = self._pending.pop(key, 0)
            g = self.graders.get(key)
            if not flags or g is None:
                continue
            self._active.add(key)
            try:
                await self._process(g, flags)
                self._attempts.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure is retried with backoff, bounded in count
                attempt = self._attempts.get(key, 0) + 1
                self._attempts[key] = attempt
                delay = min(30.0, 0.5 * 2 ** (attempt - 1))
                if attempt <= MAX_ATTEMPTS:
                    log.warning("%s/%s: %s (attempt %d, retrying in %.1fs)", *key, _describe(e), attempt,
                                delay)
                    self.enqueue(key, flags, delay)
                else:
                    log.error("%s/%s: %s; giving up until the next resync", *key, _describe(e))
                    self._attempts.pop(key, None)
            finally:
                self._active.discard(key)
                if key in self._pending:
                    self._queue.put_nowait(key)

    async def _process(self, g: Grader, flags: int) -> None:
        if flags & FULL:
            await self.reconcile(g)
        elif flags & DEPLOYMENT:
            await self.apply_deployment(g)
            await self.write_status(g)
        else:
            await self.write_status(g)

    # ---------------------------------------------------------------- reconcile

    def _event(self, g: Grader, reason: str, message: str, warning: bool = False) -> None:
        log.info("%s/%s: %s: %s", *g.key, reason, message)
        if self._post_event is not None:
            self._post_event(g.body, "Warning" if warning else "Normal", reason, message)

    def _dial_url(self, spec: CourseGraderSpec) -> str:
        return self.config.xqueue_url_override or spec.server.url

    def _parse(self, g: Grader) -> None:
        if g.parsed_generation == g.generation and (g.spec is not None or g.spec_error is not None):
            return
        g.parsed_generation = g.generation
        problems = validate_name(g.key[1])
        try:
            spec = parse_spec(g.body.get("spec"), self.config.spec_defaults)
        except SpecError as e:
            problems += e.problems
            spec = None
        if problems:
            g.spec, g.spec_error = None, "; ".join(problems)
        else:
            g.spec, g.spec_error = spec, None

    async def reconcile(self, g: Grader) -> None:
        self.reconciles += 1
        self._parse(g)
        generation = g.generation
        drift, g.drift = g.drift, []
        if g.spec is None:
            if g.warned_generation != generation:
                g.warned_generation = generation
                self._event(g, "InvalidSpec", g.spec_error or "invalid spec", warning=True)
            g.reconciled_generation = generation
            await self.write_status(g, force=True)
            return
        spec = g.spec
        if drift and any("deleted" in d for d in drift):
            # A deleted child may just be garbage collection after the CourseGrader itself went away
            # (the two watch streams are not ordered): confirm before re-creating anything.
            current = await self.kube.get(C.API_VERSION, C.KIND, *g.key)
            if current is None or current["metadata"].get("uid") != g.body["metadata"].get("uid") \
                    or current["metadata"].get("deletionTimestamp"):
                self._forget(g.key)
                return
        try:
            retry = await self._apply_all(g, spec, drift)
            g.reconcile_error = None
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            g.reconcile_error = _describe(e)
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await self.write_status(g, force=True)
            raise
        g.reconciled_generation = generation
        if g.load is None and g.metrics_error is None and spec.scaling.enabled:
            # What the scaler already knows about this server, so the first status write is complete.
            url, now = self._dial_url(spec), self._clock()
            seen = self._last_queues.get(url)
            down = self._unreachable.get(url)
            if seen is not None and now - seen[0] < 3 * self.config.scale_interval and spec.queue in seen[1]:
                g.load = seen[1][spec.queue]
            elif down is not None and down[0] > now:
                g.metrics_error = down[1]
        await self.write_status(g, force=True)
        if retry:
            self.enqueue(g.key, FULL, delay=5.0)

    async def _read(self, g: Grader, kind: str) -> dict[str, Any] | None:
        api_version = {"Deployment": "apps/v1", "NetworkPolicy": "networking.k8s.io/v1"}.get(kind, "v1")
        return await self.kube.get(api_version, kind, g.key[0], ObjectNames.for_owner(g.key[1]).name_for(kind))

    async def _apply_all(self, g: Grader, spec: CourseGraderSpec, drift: list[str]) -> bool:
        """Make every managed object match the spec; returns whether credentials need another look.

        Two modes, to keep the API server's work proportional to what changed:
        * apply - the spec changed (or the object is new): apply everything with server-side apply
          in two round trips (ServiceAccount, ConfigMap, NetworkPolicy and the credentials check
          together, then the Deployment, whose pods need the first two);
        * verify - resync, drift or operator restart with an unchanged spec: read the objects
          (GETs are cheap) and apply only those that are missing or differ. A restart of the
          operator over 1,000 healthy CourseGraders then writes nothing.
        """
        owner = g.owner
        stored = (g.body.get("status") or {}).get("observedGeneration")
        verify = g.generation in (g.reconciled_generation, stored)
        first_read = g.desired_replicas is None
        objects = build_objects(owner, spec, 0, self.config)
        objects.pop("Deployment")
        read_kinds = list(C_KINDS) if verify else (["Deployment"] if first_read and stored else [])
        started = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=2)
        known = dict(g.seen_rv)  # watch events for our own writes may update seen_rv meanwhile
        (g.provisioned, retry), *reads = await asyncio.gather(
            self._credentials(g, spec), *(self._read(g, kind) for kind in read_kinds))
        observed: dict[str, dict[str, Any] | None] = dict(zip(read_kinds, reads, strict=True))
        if first_read:
            existing = observed.get("Deployment")
            current = existing.get("spec", {}).get("replicas") if existing else None
            g.desired_replicas = initial_replicas(spec.scaling, current)
            g.history.add(self._clock(), g.desired_replicas, keep=spec.scaling.scale_down_window)
        elif not spec.scaling.enabled:
            g.desired_replicas = clamp(spec.scaling.min_replicas, spec.scaling)
        else:
            g.desired_replicas = clamp(g.desired_replicas or 0, spec.scaling)
        replicas = g.desired_replicas

        def needed(obj: dict[str, Any]) -> bool:
            if not verify:
                return True
            current = observed.get(obj["kind"])
            if current is None or find_drift(comparable(obj), current) is not None:
                return True
            g.seen_rv[obj["kind"]] = current["metadata"].get("resourceVersion", "")
            return False

        results = await asyncio.gather(*(self.kube.apply(o) for o in objects.values() if needed(o)))
        deployment = build_deployment(owner, spec, replicas)
        if needed(deployment):
            await self.mark_pod_deletion_costs(g, g.applied_replicas, replicas)
            results.append(await self.kube.apply(deployment))
            g.deployment = _trim_deployment(results[-1])
        elif observed.get("Deployment") is not None:
            g.deployment = _trim_deployment(observed["Deployment"])
        g.applied_replicas = replicas
        changes: list[str] = []
        for obj in results:
            kind, meta = obj.get("kind", ""), obj.get("metadata", {})
            rv = meta.get("resourceVersion", "")
            g.seen_rv[kind] = rv
            if verify:
                existed = observed.get(kind) is not None
                changes.append(f"{'updated' if existed else 'created'} {kind} {meta.get('name')}")
            elif known.get(kind) is None and _parse_time(meta.get("creationTimestamp")) >= started:
                changes.append(f"created {kind} {meta.get('name')}")
            elif known.get(kind) not in (None, rv):
                changes.append(f"updated {kind} {meta.get('name')}")
        np_exists = observed.get("NetworkPolicy") is not None if verify else (
            "NetworkPolicy" in known or first_read)
        if not spec.network_policy.enabled and np_exists:
            name = ObjectNames.for_owner(owner.name).network_policy
            g.seen_rv.pop("NetworkPolicy", None)
            if await self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", owner.namespace, name):
                changes.append(f"deleted NetworkPolicy {name} (spec.networkPolicy.enabled is false)")
        if drift and changes:
            self._event(g, "DriftRepaired", "; ".join(drift)[:400] + " -> " + "; ".join(changes)[:400],
                        warning=True)
        elif changes:
            self._event(g, "Applied", "; ".join(changes)[:800])
        return retry

    async def _credentials(self, g: Grader, spec: CourseGraderSpec) -> tuple[Condition, bool]:
        """Check (or provision) the grader account; returns the Provisioned condition and whether to
        retry soon. XQueue failures are reported in status, not raised: the Deployment is still
        applied and the graders start as soon as the account works."""
        owner = g.owner
        ns = owner.namespace
        if not spec.server.provision:
            name = spec.server.credentials_secret or ""
            secret = await self.kube.get("v1", "Secret", ns, name)
            if secret is None:
                return Condition(C.COND_PROVISIONED, False, "SecretNotFound",
                                 f"Secret {name} (spec.server.credentialsSecretRef) not found"), True
            data = secret.get("data") or {}
            username = _decode(data, spec.server.username_key)
            password = _decode(data, spec.server.password_key)
            if not username or password is None:
                return Condition(C.COND_PROVISIONED, False, "SecretKeyMissing",
                                 f"Secret {name} lacks key {spec.server.username_key!r} or "
                                 f"{spec.server.password_key!r}"), True
            g.creds = Auth(username=username, password=password)
            return Condition(C.COND_PROVISIONED, True, "CredentialsFound",
                             f"graders log in as {username} (Secret {name})"), False
        if not self.config.has_admin:
            return Condition(C.COND_PROVISIONED, False, "NoAdminCredentials",
                             "spec.server.provision needs XQueue admin credentials in the operator "
                             "(XQOP_ADMIN_USERNAME/PASSWORD or XQOP_ADMIN_TOKEN)"), False
        username = grader_username(owner, spec)
        name = credentials_secret_name(owner, spec)
        secret = await self.kube.get("v1", "Secret", ns, name)
        data = (secret or {}).get("data") or {}
        password = _decode(data, "password")
        if secret is None or _decode(data, "username") != username or not password:
            password = secrets.token_urlsafe(32)
            secret = await self.kube.apply(build_credentials_secret(owner, username, password))
            g.seen_rv["Secret"] = secret.get("metadata", {}).get("resourceVersion", "")
            self._event(g, "CredentialsCreated", f"generated a password for {username} in Secret {name}")
        # Setting a password costs the server a deliberately slow hash, so the account is only
        # (re)written when something changed: the spec, the Secret, a failure, or once an hour.
        key = (g.generation, secret.get("metadata", {}).get("resourceVersion", ""))
        now = self._clock()
        stored = next((c for c in (g.body.get("status") or {}).get("conditions", [])
                       if c.get("type") == C.COND_PROVISIONED), {})
        if g.provisioned_key is None and stored.get("status") == "True" \
                and stored.get("observedGeneration") == g.generation:
            # Operator restart: the previous run provisioned this generation; trust it until the
            # next refresh instead of re-hashing 1,000 passwords at start-up.
            g.provisioned_key, g.provisioned_at = key, now
        if g.provisioned_key == key and now - g.provisioned_at < PROVISION_REFRESH \
                and (g.provisioned is None or g.provisioned.status):
            g.creds = Auth(username=username, password=password)
            return Condition(C.COND_PROVISIONED, True, "Provisioned",
                             f"queue {spec.queue} and account {username} exist on the XQueue server"), False
        url = self._dial_url(spec)
        try:
            created = await self.xq.ensure_queue(url, spec.queue, self._admin)
            await self.xq.ensure_user(url, username, password, [spec.queue], self._admin)
        except XQueueError as e:
            return Condition(C.COND_PROVISIONED, False, "ProvisioningFailed", str(e)), True
        if created:
            self._event(g, "QueueCreated", f"created queue {spec.queue} on the XQueue server")
        g.creds = Auth(username=username, password=password)
        if g.provisioned_key is not None and g.provisioned_key[1] != key[1]:
            self._event(g, "AccountUpdated", f"account {username} now uses the password in Secret {name}")
        g.provisioned_key, g.provisioned_at = key, now
        was_ok = g.provisioned is not None and g.provisioned.status
        if not was_ok:
            self._event(g, "Provisioned", f"queue {spec.queue} and account {username} are ready")
        return Condition(C.COND_PROVISIONED, True, "Provisioned",
                         f"queue {spec.queue} and account {username} exist on the XQueue server"), False

    async def apply_deployment(self, g: Grader) -> None:
        if g.spec is None or g.desired_replicas is None:
            return
        replicas = g.desired_replicas
        await self.mark_pod_deletion_costs(g, g.applied_replicas, replicas)
        applied = await self.kube.apply(build_deployment(g.owner, g.spec, replicas))
        g.seen_rv["Deployment"] = applied.get("metadata", {}).get("resourceVersion", "")
        g.deployment = _trim_deployment(applied)
        g.applied_replicas = replicas

    async def mark_pod_deletion_costs(self, g: Grader, current: int | None, replicas: int) -> None:
        """Before a scale-down, set pod-deletion-cost on the grader pods to their in-flight count.

        The ReplicaSet controller then removes idle pods first. Only on a scale-down, only if the
        server reports `in_flight_by_grader` (older servers do not: nothing is annotated), and only
        pods whose annotation changes are patched. Grader addresses are compared with status.podIP as
        strings; pods are never dialed. Best effort: a failure here never holds up the scale-down.
        """
        if g.spec is None or current is None or replicas >= current:
            return
        by_grader = g.load.in_flight_by_grader if g.load is not None else None
        if by_grader is None:
            # The all-queues listing (admin mode) carries no per-grader figures: one extra request
            # for this queue, made only on a scale-down.
            auth = self._admin if self.config.has_admin else g.creds
            if not auth:
                return
            try:
                by_grader = (await self.xq.queue_length(self._dial_url(g.spec), g.spec.queue,
                                                        auth)).in_flight_by_grader
            except XQueueError as e:
                log.info("%s/%s: no per-grader in-flight figures (%s); pods not annotated", *g.key, e)
                return
            if by_grader is None:
                return  # the server does not report them
        ns = g.key[0]
        try:
            pods = await self.kube.list("v1", "Pod", ns, selector_labels(g.owner))
            changes = deletion_costs(
                [(p["metadata"]["name"], (p.get("status") or {}).get("podIP"),
                  (p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION))
                 for p in pods if not p["metadata"].get("deletionTimestamp")],
                by_grader)
            results = await asyncio.gather(
                *(self.kube.merge_patch("v1", "Pod", ns, name,
                                        {"metadata": {"annotations": {DELETION_COST_ANNOTATION: cost}}})
                  for name, cost in changes.items()),
                return_exceptions=True)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("%s/%s: could not set pod-deletion-cost: %s", *g.key, _describe(e))
            return
        failed = [r for r in results if isinstance(r, BaseException)
                  and not (isinstance(r, ApiError) and r.not_found)]
        if failed:
            log.warning("%s/%s: could not set pod-deletion-cost on %d pod(s): %s", *g.key, len(failed),
                        _describe(failed[0]))
        if changes:
            log.info("%s/%s: pod-deletion-cost set on %d pod(s) before scaling %d -> %d", *g.key,
                     len(changes) - len(failed), current, replicas)

    # ---------------------------------------------------------------- status

    def observed(self, g: Grader) -> Observed:
        spec = g.spec
        names = ObjectNames.for_owner(g.key[1])
        return Observed(
            generation=g.generation,
            spec_error=g.spec_error,
            provisioned=g.provisioned,
            reconcile_error=g.reconcile_error,
            desired_replicas=g.desired_replicas,
            deployment=g.deployment,
            queued=g.load.queued if g.load else None,
            in_flight=g.load.in_flight if g.load else None,
            oldest_queued_age=g.load.oldest_queued_age if g.load else None,
            metrics_error=g.metrics_error,
            scaling_enabled=spec.scaling.enabled if spec else True,
            limited=g.decision.limited if g.decision else False,
            max_replicas=spec.scaling.max_replicas if spec else 0,
            last_scale_time=g.last_scale_time,
            grader_username=(g.creds.username if g.creds else None),
            credentials_secret=credentials_secret_name(g.owner, spec) if spec else None,
            deployment_name=names.deployment if spec else None,
        )

    async def write_status(self, g: Grader, force: bool = False) -> None:
        new = build_status(self.observed(g), g.last_status, now_rfc3339())
        if not status_differs(new, g.last_status):
            return
        figures_only = not status_differs(new, g.last_status, ignore=FIGURES)
        wait = self.config.status_min_interval - (self._clock() - g.last_status_write)
        if figures_only and not force and wait > 0:
            # Queue figures change every tick under load; write them at a bounded rate, but make sure
            # the latest figures land eventually.
            if not g.status_timer:
                g.status_timer = True
                asyncio.get_running_loop().call_later(wait, self._status_timer, g.key)
            return
        if log.isEnabledFor(logging.DEBUG):
            changed = sorted(k for k in set(new) | set(g.last_status or {})
                             if new.get(k) != (g.last_status or {}).get(k))
            log.debug("%s/%s: writing status (%s)", *g.key, ", ".join(changed))
        try:
            result = await self.kube.patch_status(g.key[0], g.key[1], status_patch(new, g.last_status))
        except ApiError as e:
            if e.not_found:
                self._forget(g.key)  # deleted while we were not looking (missed DELETED event)
                return
            raise
        g.last_status = result.get("status") or new
        g.last_status_write = self._clock()

    def _status_timer(self, key: Key) -> None:
        g = self.graders.get(key)
        if g is not None:
            g.status_timer = False
            self.enqueue(key, STATUS)

    # ---------------------------------------------------------------- scaling

    async def _scale_loop(self) -> None:
        interval = self.config.scale_interval
        while True:
            started = self._clock()
            try:
                await self.scale_tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one tick does
                log.exception("scale tick failed")
            await asyncio.sleep(max(0.05, interval - (self._clock() - started)))

    async def _loads(self, graders: list[Grader]) -> dict[Key, QueueLoad | str]:
        """Queue figures per CourseGrader, or an error message (never raises)."""
        out: dict[Key, QueueLoad | str] = {}
        if self.config.has_admin:
            by_url: dict[str, list[Grader]] = {}
            for g in graders:
                assert g.spec is not None
                by_url.setdefault(self._dial_url(g.spec), []).append(g)

            async def one_server(url: str, group: list[Grader]) -> None:
                try:
                    queues = await self.xq.all_queue_lengths(url, self._admin)
                except XQueueError as e:
                    for g in group:
                        out[g.key] = str(e)
                    return
                self._last_queues[url] = (self._clock(), queues)
                for g in group:
                    assert g.spec is not None
                    out[g.key] = queues.get(g.spec.queue) or f"queue {g.spec.queue!r} not found"

            await asyncio.gather(*(one_server(u, gs) for u, gs in by_url.items()))
            return out
        sem = asyncio.Semaphore(self.config.metrics_concurrency)

        async def one(g: Grader) -> None:
            assert g.spec is not None
            if g.creds is None:
                out[g.key] = "no grader credentials yet"
                return
            url = self._dial_url(g.spec)
            async with sem:
                down = self._unreachable.get(url)
                if down is not None and down[0] > self._clock():
                    out[g.key] = down[1]
                    return
                try:
                    out[g.key] = await self.xq.queue_length(url, g.spec.queue, g.creds)
                except XQueueError as e:
                    out[g.key] = str(e)
                    if e.unreachable:
                        self._unreachable[url] = (self._clock() + UNREACHABLE_BACKOFF, str(e))

        await asyncio.gather(*(one(g) for g in graders))
        return out

    async def scale_tick(self) -> None:
        self.scale_ticks += 1
        graders = [g for g in self.graders.values()
                   if g.spec is not None and g.spec.scaling.enabled and g.desired_replicas is not None
                   and not g.body["metadata"].get("deletionTimestamp")]
        if not graders:
            return
        loads = await self._loads(graders)
        now = self._clock()
        for g in graders:
            result = loads.get(g.key)
            if g.spec is None or g.desired_replicas is None or result is None:
                continue  # changed while the requests were out
            if isinstance(result, str):
                if g.metrics_error != result:
                    g.metrics_error = result
                    self.enqueue(g.key, STATUS)
                continue
            changed = g.metrics_error is not None or g.load is None or result.queued > 0 or \
                (g.load.queued, g.load.in_flight) != (result.queued, result.in_flight)
            g.metrics_error = None
            g.load = result
            current = g.desired_replicas
            g.decision = decide(g.history, now, result, current, g.spec.slots, g.spec.scaling)
            if g.decision.replicas != current:
                g.desired_replicas = g.decision.replicas
                g.last_scale_time = now_rfc3339()
                up = g.decision.replicas > current
                self._event(g, "ScaledUp" if up else "ScaledDown",
                            f"grader Deployment {current} -> {g.decision.replicas} replicas: "
                            f"{g.decision.reason}")
                self.enqueue(g.key, DEPLOYMENT | STATUS)
            elif changed:
                # Idle queues that stay idle change nothing in status: no work for 1,000 quiet courses.
                self.enqueue(g.key, STATUS)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            for key in list(self.graders):
                self.enqueue(key, FULL)


def _parse_time(text: str | None) -> datetime.datetime:
    if not text:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def _describe(e: BaseException) -> str:
    """A one-line, secret-free description of an error for status, events and logs."""
    if isinstance(e, ApiError):
        return f"Kubernetes API {e.status} {e.reason}: {e.message}"[:500]
    return f"{type(e).__name__}: {e}"[:500]
