"""Replica decisions: immediate scale-up, stabilised scale-down, no flapping."""

from __future__ import annotations

import math
from typing import Any

import pytest

from coursegrader_operator.scaling import (
    QueueLoad,
    ScaleHistory,
    clamp,
    decide,
    hold,
    initial_replicas,
    raw_recommendation,
    target_replicas,
)
from coursegrader_operator.spec import ScalingPolicy


def policy(**kw: float | bool) -> ScalingPolicy:
    base: dict[str, Any] = dict(enabled=True, min_replicas=1, max_replicas=10, target_per_slot=1.0, scale_up_window=0,
                scale_down_window=120, allow_scale_to_zero=False)
    base.update(kw)
    return ScalingPolicy(**base)


@pytest.mark.parametrize(("queued", "in_flight", "slots", "target", "expected"), [
    (0, 0, 2, 1, 0), (1, 0, 2, 1, 1), (2, 0, 2, 1, 1), (3, 0, 2, 1, 2), (0, 5, 2, 1, 3),
    (200, 0, 4, 1, 50), (10, 0, 2, 2.5, 2), (8, 0, 4, 0.5, 4),
])
def test_recommendation_counts_queued_and_in_flight(queued: int, in_flight: int, slots: int, target: float,
                                                     expected: int) -> None:
    assert raw_recommendation(QueueLoad(queued, in_flight), slots, target) == expected


def test_clamp_respects_min_max_and_scale_to_zero() -> None:
    assert clamp(50, policy()) == 10
    assert clamp(0, policy()) == 1
    assert clamp(0, policy(min_replicas=0)) == 1  # zero needs allowScaleToZero
    assert clamp(0, policy(min_replicas=0, allow_scale_to_zero=True)) == 0


def test_burst_scales_up_at_once_and_is_limited_at_max() -> None:
    h = ScaleHistory()
    d = decide(h, 0.0, QueueLoad(200, 0), current=1, slots=4, policy=policy())
    assert d.replicas == 10 and d.recommendation == 10
    assert d.limited


def test_scale_down_waits_for_the_window() -> None:
    p = policy(scale_down_window=120)
    h = ScaleHistory()
    current = decide(h, 0.0, QueueLoad(40, 0), 1, 2, p).replicas
    assert current == 10
    t = 0.0
    while t < 119:
        t += 2
        d = decide(h, t, QueueLoad(0, 0), current, 2, p)
        assert d.replicas == 10, t
    d = decide(h, 122.0, QueueLoad(0, 0), current, 2, p)
    assert d.replicas == 1


def test_in_flight_work_keeps_graders_running() -> None:
    p = policy(scale_down_window=0)
    d = decide(ScaleHistory(), 0.0, QueueLoad(queued=0, in_flight=6), current=4, slots=2, policy=p)
    assert d.replicas == 3  # 6 in flight need 3 pods of 2 slots even with an empty queue


def test_scale_down_goes_to_the_highest_recent_recommendation() -> None:
    p = policy(scale_down_window=60)
    h = ScaleHistory()
    decide(h, 0.0, QueueLoad(20, 0), 1, 2, p)  # rec 10
    decide(h, 30.0, QueueLoad(8, 0), 10, 2, p)  # rec 4
    d = decide(h, 70.0, QueueLoad(0, 0), 10, 2, p)  # window [10, 70]: recs 4, 1 -> 4
    assert d.replicas == 4


def test_sawtooth_load_does_not_flap() -> None:
    """60 s sawtooth (burst then drained) for 10 min: replicas stay at the peak, no direction changes."""
    p = policy(scale_down_window=120)
    h = ScaleHistory()
    current = 1
    changes: list[tuple[float, int, int]] = []
    for tick in range(300):
        t = tick * 2.0
        phase = t % 60
        queued = 30 if phase < 20 else 0
        d = decide(h, t, QueueLoad(queued, 0), current, 2, p)
        if d.replicas != current:
            changes.append((t, current, d.replicas))
            current = d.replicas
    assert changes == [(0.0, 1, 10)]
    # ... and once the load stops, exactly one scale-down after the window.
    for tick in range(300, 400):
        t = tick * 2.0
        d = decide(h, t, QueueLoad(0, 0), current, 2, p)
        if d.replicas != current:
            changes.append((t, current, d.replicas))
            current = d.replicas
    assert len(changes) == 2 and changes[1][2] == 1
    last_burst_tick = 558.0  # the last period starts at t=540 and is loaded while phase < 20
    assert changes[1][0] - last_burst_tick >= 120


def test_scale_up_window_ignores_a_single_spike() -> None:
    p = policy(scale_up_window=10, scale_down_window=0)
    h = ScaleHistory()
    decide(h, 0.0, QueueLoad(0, 0), 1, 2, p)
    d = decide(h, 2.0, QueueLoad(40, 0), 1, 2, p)
    assert d.replicas == 1  # the window still holds a "1"
    for t in (4.0, 6.0, 8.0, 10.0):
        d = decide(h, t, QueueLoad(40, 0), 1, 2, p)
    d = decide(h, 12.5, QueueLoad(40, 0), 1, 2, p)
    assert d.replicas == 10


def test_scale_to_zero_and_wake_up() -> None:
    p = policy(min_replicas=0, allow_scale_to_zero=True, scale_down_window=30)
    h = ScaleHistory()
    current = 2
    for t in range(0, 40, 2):
        current = decide(h, float(t), QueueLoad(0, 0), current, 2, p).replicas
    assert current == 0
    assert decide(h, 40.0, QueueLoad(1, 0), current, 2, p).replicas == 1


def test_history_is_bounded() -> None:
    h = ScaleHistory()
    for t in range(10_000):
        h.add(float(t), t % 7, keep=120)
    assert len(h.samples) <= 122


def test_restart_keeps_running_replicas_within_bounds() -> None:
    assert initial_replicas(policy(), existing=6) == 6
    assert initial_replicas(policy(max_replicas=4), existing=6) == 4
    assert initial_replicas(policy(min_replicas=2), existing=None) == 2
    assert initial_replicas(policy(enabled=False, min_replicas=3), existing=7) == 3
    assert hold(50, policy()) == 10


def test_recommendation_is_never_fractional_pods() -> None:
    for n in range(0, 100):
        assert raw_recommendation(QueueLoad(n, 0), 3, 1.0) == math.ceil(n / 3)


def test_the_replicas_to_apply_come_from_one_rule() -> None:
    p = policy(min_replicas=2, max_replicas=6)
    assert target_replicas(p, proposed=None, current=None) == 2  # new object: minReplicas
    assert target_replicas(p, proposed=None, current=5) == 5  # restart: keep what runs
    assert target_replicas(p, proposed=None, current=9) == 6  # ... within the spec's bounds
    assert target_replicas(p, proposed=4, current=2) == 4  # the scaler's proposal wins
    assert target_replicas(p, proposed=8, current=2) == 6  # clamped after a spec change
    assert target_replicas(policy(enabled=False, min_replicas=3), proposed=8, current=5) == 3
