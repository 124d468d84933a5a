"""Drift detection: does an observed object still carry everything the operator applied? (pure)

The check is containment, not equality: the API server adds defaults (terminationMessagePath,
dnsPolicy, ...) and other controllers add fields (deployment.kubernetes.io/revision). Server-side
apply would not remove fields owned by others either, so flagging them would re-apply forever.
Lists of named items (containers, env, volumes, ports) are matched by name; other lists (egress
rules, args) are atomic and must match element by element with the same length, so an appended
"allow everything" egress rule counts as drift.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12),
    "P": Decimal(10**15), "E": Decimal(10**18),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]([+-]?\d+))?([numkMGTPE]i?|Ki)?$")
# Keys whose values are resource quantities the server rewrites into canonical form ("0.5" -> "500m").
_QUANTITY_PARENTS = {"requests", "limits"}
_QUANTITY_KEYS = {"sizeLimit"}


def parse_quantity(value: Any) -> Decimal | None:
    """A Kubernetes quantity as a number, or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    m = _QUANTITY.match(str(value).strip())
    if not m:
        return None
    number, exponent, suffix = m.groups()
    try:
        result = Decimal(number) * _SUFFIX[suffix or ""]
        if exponent:
            result *= Decimal(10) ** int(exponent)
    except (InvalidOperation, KeyError):
        return None
    return result


def _same_scalar(desired: Any, observed: Any, quantity: bool) -> bool:
    if desired == observed and type(desired) is type(observed):
        return True
    if quantity:
        a, b = parse_quantity(desired), parse_quantity(observed)
        return a is not None and a == b
    # int-or-string fields (maxSurge: "25%" vs 1, port: 8080) round-trip exactly, but numbers that
    # JSON turned into floats ("1.0") should still compare equal.
    if isinstance(desired, int | float) and isinstance(observed, int | float) \
            and not isinstance(desired, bool) and not isinstance(observed, bool):
        return float(desired) == float(observed)
    return False


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, Mapping) and "name" in i for i in items)


def find_drift(desired: Any, observed: Any, path: str = "", key: str = "", container: str = "") -> str | None:
    """The first path where `observed` does not contain `desired`, or None when it does.

    `key` is the map key the values sit under and `container` the key of the map holding them;
    together they say whether a scalar is a resource quantity.
    """
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return path or "."
        for child, value in desired.items():
            if child not in observed:
                return f"{path}.{child}"
            found = find_drift(value, observed[child], f"{path}.{child}", child, key)
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return path
        if _named(desired) and _named(observed):
            by_name = {item["name"]: item for item in observed}
            for item in desired:
                other = by_name.get(item["name"])
                if other is None:
                    return f"{path}[{item['name']}]"
                found = find_drift(item, other, f"{path}[{item['name']}]", key, container)
                if found:
                    return found
            return None
        if len(desired) != len(observed):
            return path
        for i, (a, b) in enumerate(zip(desired, observed, strict=True)):
            found = find_drift(a, b, f"{path}[{i}]", key, container)
            if found:
                return found
        return None
    quantity = container in _QUANTITY_PARENTS or key in _QUANTITY_KEYS
    return None if _same_scalar(desired, observed, quantity) else path


def comparable(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a desired object that is meaningful to compare (namespace/name are the key)."""
    meta = desired.get("metadata", {})
    out = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    out["metadata"] = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
    return out
