"""What the operator remembers about one CourseGrader between events, split by concern.

Each part has one writer, named in its docstring; everyone else only reads it. The parts replace a
single mutable record that event handlers, workers, the scaler and provisioning all wrote.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from .resources import Owner
from .scaling import Decision, QueueLoad, ScaleHistory
from .spec import CourseGraderSpec
from .status import Condition
from .xqueue import Auth

Key = tuple[str, str]  # (namespace, name)


def trim_coursegrader(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    keep = ("name", "namespace", "uid", "generation", "resourceVersion", "deletionTimestamp")
    return {
        "apiVersion": body.get("apiVersion", C.API_VERSION), "kind": body.get("kind", C.KIND),
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": copy.deepcopy(body.get("spec") or {}),
        "status": copy.deepcopy(body.get("status") or {}),
    }


def trim_deployment(body: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if body is None:
        return None
    meta = body.get("metadata", {})
    return {"metadata": {"generation": meta.get("generation"),
                         "resourceVersion": meta.get("resourceVersion")},
            "spec": {"replicas": body.get("spec", {}).get("replicas")},
            "status": copy.deepcopy(body.get("status") or {})}


@dataclass
class SpecState:
    """The parsed spec. Writer: reconcile.Reconciler."""

    spec: CourseGraderSpec | None = None
    error: str | None = None
    parsed_generation: int | None = None
    reconciled_generation: int | None = None
    warned_generation: int | None = None


@dataclass
class AppliedState:
    """What the operator's own writes put on the API server. Writer: reconcile.Reconciler (only
    after a write succeeded, so nothing is recorded that is not applied)."""

    replicas: int | None = None  # spec.replicas of the last Deployment apply
    desired: dict[str, dict[str, Any]] = field(default_factory=dict)  # the objects applied, by kind
    seen_rv: dict[str, str] = field(default_factory=dict)  # resourceVersion of our writes and reads
    last_scale_time: str | None = None
    error: str | None = None  # the last reconcile's failure, for status


@dataclass
class ObservedState:
    """The grader Deployment as last seen. Writer: `see_deployment` (watch events and the
    reconciler's own reads and writes all go through it)."""

    deployment: dict[str, Any] | None = None

    def see_deployment(self, body: Mapping[str, Any] | None) -> bool:
        """Record a Deployment (None: deleted); returns whether its status changed."""
        before = (self.deployment or {}).get("status")
        self.deployment = trim_deployment(body)
        return self.deployment is None or self.deployment["status"] != before


@dataclass
class ScaleState:
    """Queue figures and the scaler's latest proposal. Writer: scaler.Scaler."""

    history: ScaleHistory = field(default_factory=ScaleHistory)
    load: QueueLoad | None = None
    metrics_error: str | None = None
    decision: Decision | None = None  # proposed; applied (and recorded) by the reconciler
    outage: bool = False  # the XQueue server is unreachable (reported once per outage)


@dataclass
class ProvisionState:
    """The grader account. Writer: provisioning.Provisioner."""

    condition: Condition | None = None
    creds: Auth | None = None
    key: tuple[int, str] | None = None  # (generation, Secret resourceVersion) provisioned
    at: float = 0.0
    secret_digest: str | None = None  # digest of the provisioned Secret's data as last read/written


@dataclass
class StatusState:
    """The stored status and write throttling. Writer: status_writer.StatusWriter (the controller
    refreshes `last` from watch events through `stored`)."""

    last: dict[str, Any] | None = None
    written_at: float = 0.0
    timer_due: float = 0.0  # a delayed write of the latest figures is pending until then
    pods_problem: str | None = None
    pods_checked_at: float = -1e9
    unready_since: float | None = None  # graders below the desired count since (clock)

    def stored(self, status: Mapping[str, Any] | None) -> None:
        self.last = dict(status) if status else None


@dataclass
class Course:
    """One CourseGrader: its trimmed body (writer: the controller's event intake) and the parts."""

    key: Key
    body: dict[str, Any]
    spec: SpecState = field(default_factory=SpecState)
    applied: AppliedState = field(default_factory=AppliedState)
    observed: ObservedState = field(default_factory=ObservedState)
    scale: ScaleState = field(default_factory=ScaleState)
    provision: ProvisionState = field(default_factory=ProvisionState)
    status: StatusState = field(default_factory=StatusState)

    @classmethod
    def from_body(cls, key: Key, body: dict[str, Any]) -> Course:
        course = cls(key=key, body=body)
        course.status.stored(body.get("status"))
        # An operator restart keeps the last recorded scale time instead of dropping it from status.
        course.applied.last_scale_time = (body.get("status") or {}).get("lastScaleTime")
        return course

    @property
    def owner(self) -> Owner:
        return Owner.from_body(self.body)

    @property
    def generation(self) -> int:
        return int(self.body.get("metadata", {}).get("generation") or 0)

    @property
    def uid(self) -> str:
        return str(self.body.get("metadata", {}).get("uid", ""))

    @property
    def deleting(self) -> bool:
        return bool(self.body.get("metadata", {}).get("deletionTimestamp"))
