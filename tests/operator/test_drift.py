"""Drift detection between what the operator applies and what the API server stores."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.drift import comparable, find_drift, parse_quantity
from coursegrader_operator.resources import Owner, build_deployment, build_network_policy
from coursegrader_operator.spec import CourseGraderSpec


def as_stored(desired: dict[str, Any]) -> dict[str, Any]:
    """Roughly what the API server returns: defaults and controller fields added, quantities canonical."""
    stored = copy.deepcopy(desired)
    stored["metadata"].update(uid="u", resourceVersion="12", generation=3,
                              annotations={"deployment.kubernetes.io/revision": "1"})
    pod = stored["spec"]["template"]["spec"]
    pod.update(dnsPolicy="ClusterFirst", restartPolicy="Always", schedulerName="default-scheduler")
    for container in pod["containers"] + pod["initContainers"]:
        container.update(terminationMessagePath="/dev/termination-log", terminationMessagePolicy="File")
        container["livenessProbe"] = {**container.get("livenessProbe", {}), "successThreshold": 1} \
            if "livenessProbe" in container else container.get("livenessProbe")
        if container.get("livenessProbe") is None:
            container.pop("livenessProbe")
    stored["spec"]["progressDeadlineSeconds"] = 600
    stored["status"] = {"replicas": 1, "readyReplicas": 1}
    return stored


@pytest.mark.parametrize(("text", "value"), [
    ("500m", Decimal("0.5")), ("0.5", Decimal("0.5")), ("1Gi", Decimal(2**30)), ("1024Mi", Decimal(2**30)),
    ("2", Decimal(2)), (3, Decimal(3)), ("1e3", Decimal(1000)), ("1k", Decimal(1000)),
])
def test_quantities_parse_to_numbers(text: Any, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_bad_quantity_is_none() -> None:
    assert parse_quantity("lots") is None
    assert parse_quantity(True) is None


def test_server_defaults_and_controller_fields_are_not_drift(owner: Owner, spec: CourseGraderSpec) -> None:
    desired = build_deployment(owner, spec, 2)
    assert find_drift(comparable(desired), as_stored(desired)) is None


def test_canonicalised_quantities_are_not_drift(owner: Owner, spec: CourseGraderSpec) -> None:
    desired = build_deployment(owner, spec, 2)
    stored = as_stored(desired)
    (grader,) = stored["spec"]["template"]["spec"]["containers"]
    grader["resources"]["requests"]["cpu"] = "0.5"  # desired says 500m
    grader["resources"]["limits"]["memory"] = str(int(grader["resources"]["limits"]["memory"][:-2]) * 2**20)
    assert find_drift(comparable(desired), stored) is None
    grader["resources"]["limits"]["memory"] = "1Gi"
    assert find_drift(comparable(desired), stored) == \
        ".spec.template.spec.containers[grader].resources.limits.memory"


def test_edited_replicas_image_and_env_are_drift(owner: Owner, spec: CourseGraderSpec) -> None:
    desired = comparable(build_deployment(owner, spec, 2))
    stored = as_stored(build_deployment(owner, spec, 2))
    stored["spec"]["replicas"] = 9
    assert find_drift(desired, stored) == ".spec.replicas"

    stored = as_stored(build_deployment(owner, spec, 2))
    stored["spec"]["template"]["spec"]["containers"][0]["image"] = "evil:latest"
    assert find_drift(desired, stored) == ".spec.template.spec.containers[grader].image"

    stored = as_stored(build_deployment(owner, spec, 2))
    env = stored["spec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "XQGRADER_PASSWORD_FILE"]
    assert "XQGRADER_PASSWORD_FILE" in (find_drift(desired, stored) or "")


def test_removed_security_context_is_drift(owner: Owner, spec: CourseGraderSpec) -> None:
    desired = comparable(build_deployment(owner, spec, 1))
    stored = as_stored(build_deployment(owner, spec, 1))
    stored["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    assert find_drift(desired, stored) is not None


def test_extra_named_items_from_other_managers_are_tolerated(owner: Owner, spec: CourseGraderSpec) -> None:
    # Server-side apply would not remove an env var another manager added; flagging it would loop.
    desired = comparable(build_deployment(owner, spec, 1))
    stored = as_stored(build_deployment(owner, spec, 1))
    stored["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "EXTRA", "value": "1"})
    assert find_drift(desired, stored) is None


def test_appended_egress_rule_is_drift(owner: Owner, spec: CourseGraderSpec) -> None:
    desired = build_network_policy(owner, spec, OperatorConfig())
    stored = copy.deepcopy(desired)
    assert find_drift(comparable(desired), stored) is None
    stored["spec"]["egress"].append({})  # "allow all egress"
    assert find_drift(comparable(desired), stored) == ".spec.egress"


def test_removed_owner_reference_and_label_are_drift(owner: Owner, spec: CourseGraderSpec) -> None:
    desired = build_deployment(owner, spec, 1)
    stored = as_stored(desired)
    stored["metadata"]["ownerReferences"] = []
    assert find_drift(comparable(desired), stored) == ".metadata.ownerReferences"
    stored = as_stored(desired)
    del stored["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert find_drift(comparable(desired), stored) == ".metadata.labels.app.kubernetes.io/managed-by"


def test_int_or_string_values_compare_by_type() -> None:
    assert find_drift({"maxSurge": "25%"}, {"maxSurge": "25%"}) is None
    assert find_drift({"maxSurge": "25%"}, {"maxSurge": 25}) == ".maxSurge"
    assert find_drift({"port": 8080}, {"port": 8080.0}) is None
    assert find_drift({"flag": True}, {"flag": 1}) == ".flag"
