"""The NetworkPolicy evaluator the tier-C network test relies on (tests/node/netpol.py)."""

from __future__ import annotations

from typing import Any

from tests.node.netpol import Endpoint, connection_allowed, policies_selecting, selector_matches

NS_LABELS = {"courses": {"kubernetes.io/metadata.name": "courses"},
             "xq": {"kubernetes.io/metadata.name": "xq"}}
GRADER = Endpoint("10.85.0.10", "courses", {"app": "grader"})
SERVER = Endpoint("10.85.0.11", "xq", {"app": "server"})
DB = Endpoint("10.85.0.12", "xq", {"app": "db"})
OTHER = Endpoint("10.85.0.13", "courses", {"app": "other"})
HOST = Endpoint("10.85.0.1")


def policy(ns: str, name: str, selector: dict[str, str], types: list[str], **rules: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": types, **rules}}


GRADER_EGRESS = policy("courses", "grader", {"app": "grader"}, ["Egress"], egress=[
    {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "xq"}},
             "podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"protocol": "TCP", "port": 18040}]},
])
DB_INGRESS = policy("xq", "db", {"app": "db"}, ["Ingress", "Egress"], ingress=[
    {"from": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": [{"protocol": "TCP", "port": 5432}]},
])


def test_selectors() -> None:
    assert selector_matches({}, {"a": "b"}) and selector_matches(None, {})
    assert selector_matches({"matchLabels": {"a": "b"}}, {"a": "b", "c": "d"})
    assert not selector_matches({"matchLabels": {"a": "b"}}, {"a": "c"})
    assert selector_matches({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "y"]}]}, {"a": "y"})
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {})
    assert selector_matches({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]}]}, {})


def test_grader_egress_only_to_server_and_dns() -> None:
    policies = [GRADER_EGRESS, DB_INGRESS]
    assert connection_allowed(policies, GRADER, SERVER, 18040, NS_LABELS)
    assert not connection_allowed(policies, GRADER, SERVER, 5432, NS_LABELS)  # right pod, wrong port
    assert connection_allowed(policies, GRADER, HOST, 53, NS_LABELS, protocol="UDP")  # DNS anywhere
    assert not connection_allowed(policies, GRADER, DB, 5432, NS_LABELS)
    assert not connection_allowed(policies, GRADER, HOST, 6443, NS_LABELS)  # the API server
    # An unselected pod is not isolated; the database's ingress still is.
    assert connection_allowed(policies, OTHER, HOST, 6443, NS_LABELS)
    assert not connection_allowed(policies, OTHER, DB, 5432, NS_LABELS)
    assert connection_allowed(policies, SERVER, DB, 5432, NS_LABELS)
    assert policies_selecting(policies, GRADER, "Egress") == ["grader"]
    assert policies_selecting(policies, GRADER, "Ingress") == []


def test_pod_selector_alone_is_namespace_local_and_ip_blocks_have_exceptions() -> None:
    elsewhere = Endpoint("10.85.0.20", "courses", {"app": "server"})
    assert not connection_allowed([DB_INGRESS], elsewhere, DB, 5432, NS_LABELS)
    blocked = policy("courses", "b", {}, ["Egress"], egress=[
        {"to": [{"ipBlock": {"cidr": "10.85.0.0/24", "except": ["10.85.0.1/32"]}}]}])
    assert connection_allowed([blocked], GRADER, SERVER, 1, NS_LABELS)
    assert not connection_allowed([blocked], GRADER, HOST, 1, NS_LABELS)
