"""In-memory stand-ins for the Kubernetes API and the XQueue admin API, for the operator's glue
(reconcile, scaler, controller) in unit tests. Fixtures that build them live in conftest.py."""

from __future__ import annotations

import copy
from typing import Any

from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.provisioning import Provisioner
from coursegrader_operator.reconcile import Reconciler
from coursegrader_operator.resources import Owner
from coursegrader_operator.scaling import DELETION_COST_ANNOTATION, Decision, QueueLoad
from coursegrader_operator.spec import CourseGraderSpec
from coursegrader_operator.state import Course
from coursegrader_operator.status import now_rfc3339
from coursegrader_operator.xqueue import Auth, XQueueError


class FakeKube:
    """Records calls; `apply` answers with the object; `down = True` makes every call fail."""

    def __init__(self, pods: list[dict[str, Any]] | None = None) -> None:
        self.pods = pods or []
        self.calls: list[tuple[str, ...]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.down = False
        self._rv = 100

    async def close(self) -> None:
        return None

    def _check(self) -> None:
        if self.down:
            raise TimeoutError("the API server does not answer")

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: dict[str, str]) -> list[dict[str, Any]]:
        self._check()
        self.calls.append(("list", kind, namespace, ",".join(sorted(label_selector))))
        return self.pods

    async def merge_patch(self, api_version: str, kind: str, namespace: str, name: str,
                          patch: dict[str, Any]) -> dict[str, Any]:
        self._check()
        self.calls.append(("patch", kind, name, patch["metadata"]["annotations"][DELETION_COST_ANNOTATION]))
        return {}

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self._check()
        if obj["kind"] == "Deployment":
            self.calls.append(("apply", obj["kind"], str(obj["spec"]["replicas"])))
        else:
            self.calls.append(("apply", obj["kind"]))
        key = (obj["kind"], obj["metadata"]["name"])
        stored = self.objects.get(key)
        if stored is None or {k: v for k, v in stored.items() if k != "metadata"} != \
                {k: v for k, v in obj.items() if k != "metadata"}:
            self._rv += 1
            created = (stored or {}).get("metadata", {}).get("creationTimestamp") or now_rfc3339()
            stored = copy.deepcopy(dict(obj))
            stored["metadata"]["resourceVersion"] = str(self._rv)
            stored["metadata"]["creationTimestamp"] = created
            if obj["kind"] == "Deployment":  # a healthy cluster: every replica ready at once
                n = obj["spec"]["replicas"]
                stored["metadata"]["generation"] = 1
                stored["status"] = {"readyReplicas": n, "updatedReplicas": n, "observedGeneration": 1}
            self.objects[key] = stored
        return copy.deepcopy(stored)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        self.calls.append(("get", kind, name))
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self._check()
        return self.objects.pop((kind, name), None) is not None

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self._check()
        self.status_patches.append(copy.deepcopy(status))
        return {"status": {k: v for k, v in status.items() if v is not None}}


class FakeXQueue:
    """Queue lengths from `reply` (None: the server is unreachable)."""

    def __init__(self, reply: QueueLoad | None) -> None:
        self.reply = reply
        self.calls = 0

    async def close(self) -> None:
        return None

    async def queue_length(self, base_url: str, queue: str, auth: Auth) -> QueueLoad:
        self.calls += 1
        if self.reply is None:
            raise XQueueError("cannot reach the XQueue server", unreachable=True)
        return self.reply

    async def all_queue_lengths(self, base_url: str, auth: Auth) -> dict[str, QueueLoad]:
        self.calls += 1
        if self.reply is None:
            raise XQueueError("cannot reach the XQueue server", unreachable=True)
        return {"MITx-6.00x": self.reply}


class Events:
    """Collects what the operator records: (reason, message, warning)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, bool]] = []

    def __call__(self, c: Course, reason: str, message: str, warning: bool = False) -> None:
        self.items.append((reason, message, warning))

    def reasons(self) -> list[str]:
        return [r for r, _, _ in self.items]


def course(owner: Owner, spec: CourseGraderSpec, load: QueueLoad | None = None, applied: int | None = None,
           desired: int | None = None, generation: int = 1,
           status: dict[str, Any] | None = None) -> Course:
    """A Course as the controller holds it after a reconcile of `spec` applied `applied` replicas."""
    body = {"metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid,
                         "generation": generation}, "spec": {}, "status": status or {}}
    c = Course.from_body((owner.namespace, owner.name), body)
    c.spec.spec = spec
    c.spec.parsed_generation = c.spec.reconciled_generation = generation
    c.scale.load = load
    c.applied.replicas = applied
    if desired is not None:
        c.scale.decision = Decision(desired, desired, False, "test")
    c.provision.creds = Auth(username="grader", password="pw")
    return c


def make_reconciler(kube: FakeKube, xq: FakeXQueue, events: Events | None = None,
                    config: OperatorConfig | None = None) -> Reconciler:
    config = config or OperatorConfig()
    record = events if events is not None else Events()
    provisioner = Provisioner(config, kube, xq, record)  # type: ignore[arg-type]
    return Reconciler(config, kube, xq, provisioner, record)  # type: ignore[arg-type]
