"""Pod-deletion-cost before a scale-down: idle grader pods go first, busy ones are kept."""

from __future__ import annotations

from coursegrader_operator.scaling import deletion_costs
from coursegrader_operator.xqueue import _load


def test_costs_are_in_flight_counts_per_pod_ip() -> None:
    pods = [("a", "10.244.0.1", None), ("b", "10.244.0.2", None), ("c", "10.244.0.3", None)]
    assert deletion_costs(pods, {"10.244.0.2": 3, "10.244.0.3": 1}) == {"a": "0", "b": "3", "c": "1"}


def test_only_changed_annotations_are_returned() -> None:
    pods = [("a", "10.0.0.1", "0"), ("b", "10.0.0.2", "2"), ("c", "10.0.0.3", "5"), ("d", "10.0.0.4", "1")]
    assert deletion_costs(pods, {"10.0.0.2": 2, "10.0.0.3": 1}) == {"c": "1", "d": "0"}
    assert deletion_costs([("a", "10.0.0.1", "0")], {}) == {}


def test_pods_without_ip_or_unknown_addresses_cost_zero() -> None:
    # A pending pod has no IP; an address behind NAT/a proxy matches no pod: both count as idle.
    pods = [("pending", None, None), ("empty", "", "4"), ("x", "10.0.0.9", None)]
    assert deletion_costs(pods, {"127.0.0.1": 7, "": 3}) == {"pending": "0", "empty": "0", "x": "0"}


def test_costs_are_bounded_int32_and_never_negative() -> None:
    pods = [("big", "10.0.0.1", None), ("neg", "10.0.0.2", None)]
    assert deletion_costs(pods, {"10.0.0.1": 2**40, "10.0.0.2": -3}) == {"big": str(2**31 - 1), "neg": "0"}


def test_length_reply_with_and_without_per_grader_figures() -> None:
    old = _load({"queue": "q", "queued": 1, "in_flight": 2}, "q")
    assert old.in_flight_by_grader is None  # older servers / upstream: annotation is skipped
    new = _load({"queue": "q", "queued": 1, "in_flight": 2, "in_flight_by_grader": {"10.0.0.1": 2}}, "q")
    assert new.in_flight_by_grader == {"10.0.0.1": 2}
    assert new == old  # the per-grader map does not take part in the scaler's comparisons
    assert _load({"queued": 0, "in_flight_by_grader": "junk"}, "q").in_flight_by_grader is None
    assert _load({"queued": 0, "in_flight_by_grader": {"a": "x"}}, "q").in_flight_by_grader is None
