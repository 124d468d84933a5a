"""NetworkPolicy semantics as an enforcing plugin applies them (pure: objects in, verdicts out).

Used on the real node, where the bridge CNI enforces nothing (see test_network_policy.py for why no
enforcer runs here): the live NetworkPolicy objects, pods and namespaces are read from the apiserver
and these functions say which connections an enforcing CNI would allow. Follows the
networking.k8s.io/v1 rules: a pod selected by no policy of a direction is open in that direction;
a selected pod allows what the union of those policies' rules allows; a rule with no `to`/`from`
matches every peer, one with no `ports` every port; an ipBlock matches addresses (for pods their pod
IP, the cluster-external side for anything else); peers combine namespaceSelector and podSelector
with AND inside one peer and OR between peers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod (namespace + labels) or a plain address (namespace None)."""

    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    name: str = ""

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels AND matchExpressions); an empty selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], list(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _ip_in_block(ip: str, block: Mapping[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"], strict=False)
    if address.version != network.version or address not in network:
        return False
    return not any(address in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint,
                 namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    if "ipBlock" in peer:
        return _ip_in_block(other.ip, peer["ipBlock"])
    if not other.is_pod:
        return False  # pod and namespace selectors only ever match pods
    assert other.namespace is not None
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], namespace_labels.get(other.namespace, {})):
            return False
    elif other.namespace != policy_namespace:
        return False  # a podSelector alone means pods of the policy's own namespace
    return selector_matches(peer.get("podSelector"), other.labels)


def port_matches(ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for item in ports:
        if item.get("protocol", "TCP") != protocol:
            continue
        if "port" not in item:
            return True
        start = item["port"]
        if not isinstance(start, int):
            continue  # a named port: the tests here use numbers only
        if start <= port <= int(item.get("endPort", start)):
            return True
    return False


def _applies(policy: Mapping[str, Any], pod: Endpoint, direction: str) -> bool:
    meta, spec = policy["metadata"], policy["spec"]
    if not pod.is_pod or meta["namespace"] != pod.namespace:
        return False
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") is not None else ["Ingress"])
    return direction in types and selector_matches(spec.get("podSelector"), pod.labels)


def policies_selecting(policies: Iterable[Mapping[str, Any]], pod: Endpoint, direction: str) -> list[str]:
    return [p["metadata"]["name"] for p in policies if _applies(p, pod, direction)]


def _side_allows(policies: Sequence[Mapping[str, Any]], pod: Endpoint, other: Endpoint, port: int,
                 protocol: str, direction: str, namespace_labels: Mapping[str, Mapping[str, str]]) -> bool:
    relevant = [p for p in policies if _applies(p, pod, direction)]
    if not relevant:
        return True  # not isolated in this direction
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in relevant:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            if not port_matches(rule.get("ports"), port, protocol):
                continue
            if not peers or any(peer_matches(peer, policy["metadata"]["namespace"], other, namespace_labels)
                                for peer in peers):
                return True
    return False


def connection_allowed(policies: Sequence[Mapping[str, Any]], source: Endpoint, target: Endpoint, port: int,
                       namespace_labels: Mapping[str, Mapping[str, str]], protocol: str = "TCP") -> bool:
    """Would an enforcing plugin let `source` open a connection to `target`:`port`?"""
    return (_side_allows(policies, source, target, port, protocol, "Egress", namespace_labels)
            and _side_allows(policies, target, source, port, protocol, "Ingress", namespace_labels))


def pod_endpoint(pod: Mapping[str, Any]) -> Endpoint:
    meta = pod["metadata"]
    return Endpoint(ip=str((pod.get("status") or {}).get("podIP") or "0.0.0.0"), namespace=meta["namespace"],
                    labels=dict(meta.get("labels") or {}), name=meta["name"])
