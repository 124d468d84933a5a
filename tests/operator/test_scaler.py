"""scaler.py with an injected clock: proposals are applied (and recorded) only through the reconciler,
outages are reported once, and periodic ticks do not defeat the work queue's backoff."""

from __future__ import annotations

import logging

import pytest

from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.controller import DEPLOYMENT, STATUS, Work, merge
from coursegrader_operator.provisioning import Provisioner
from coursegrader_operator.resources import Owner
from coursegrader_operator.scaler import Scaler
from coursegrader_operator.scaling import QueueLoad
from coursegrader_operator.spec import CourseGraderSpec
from coursegrader_operator.state import Key
from coursegrader_operator.workqueue import Backoff, KeyedQueue
from tests.operator.fakes import Events, FakeKube, FakeXQueue, course, make_reconciler


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def scaler(xq: FakeXQueue, events: Events, clock: Clock,
           notes: list[tuple[Key, bool]]) -> Scaler:
    config = OperatorConfig()
    provisioner = Provisioner(config, FakeKube(), xq, events, clock)  # type: ignore[arg-type]
    return Scaler(config, xq, provisioner, lambda key, scale: notes.append((key, scale)), events,  # type: ignore[arg-type]
                  clock)


async def test_a_scale_is_recorded_only_once_the_patch_succeeded(owner: Owner, spec: CourseGraderSpec) -> None:
    """A scale-up decided while the API server was down was recorded (count, time, event) before the
    patch: afterwards the Deployment stayed at the old count (issue 12)."""
    clock, events = Clock(), Events()
    notes: list[tuple[Key, bool]] = []
    kube, xq = FakeKube(), FakeXQueue(QueueLoad(queued=5, in_flight=0))
    c = course(owner, spec, applied=1)
    s = scaler(xq, events, clock, notes)
    reconciler = make_reconciler(kube, xq, events)
    await s.tick([c])
    assert notes == [(c.key, True)]  # proposed: 5 outstanding / 2 slots -> 3
    assert c.scale.decision is not None and c.scale.decision.replicas == 3
    kube.down = True
    with pytest.raises(TimeoutError):
        await reconciler.apply_deployment(c)
    assert c.applied.replicas == 1 and c.applied.last_scale_time is None
    assert "ScaledUp" not in events.reasons()
    kube.down = False
    clock.now += 2
    await s.tick([c])  # still proposing 3 against the applied 1
    assert notes[-1] == (c.key, True)
    await reconciler.apply_deployment(c)
    assert c.applied.replicas == 3 and c.applied.last_scale_time is not None
    assert kube.calls[-1] == ("apply", "Deployment", "3")
    assert events.reasons().count("ScaledUp") == 1
    assert "1 -> 3 replicas" in next(m for r, m, _ in events.items if r == "ScaledUp")


async def test_periodic_ticks_wait_for_the_retry_of_a_failing_key(owner: Owner, spec: CourseGraderSpec) -> None:
    """The tick re-enqueued a key whose retry was pending: ten attempts in 11 s (issue 12)."""
    clock, events = Clock(), Events()
    notes: list[tuple[Key, bool]] = []
    kube, xq = FakeKube(), FakeXQueue(QueueLoad(queued=5, in_flight=0))
    kube.down = True
    c = course(owner, spec, applied=1)
    s = scaler(xq, events, clock, notes)
    reconciler = make_reconciler(kube, xq, events)
    queue: KeyedQueue[Key, Work] = KeyedQueue(merge, backoff=Backoff(), clock=clock)
    attempts: list[float] = []
    started = clock.now
    while clock.now - started < 11:
        await s.tick([c])  # every tick proposes the scale again
        for key, scale in notes:
            queue.add(key, Work(DEPLOYMENT | STATUS if scale else STATUS))
        notes.clear()
        item = queue.pop()
        if item is not None:
            attempts.append(clock.now - started)
            try:
                await reconciler.apply_deployment(c)
            except TimeoutError:
                queue.failed(*item)
        clock.now += 0.5
    assert attempts == [0, 0.5, 1.5, 3.5, 7.5]  # 0.5, 1, 2, 4 s apart: the backoff held


async def test_an_unreachable_server_is_reported_once_per_outage(owner: Owner, spec: CourseGraderSpec,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    clock, events = Clock(), Events()
    notes: list[tuple[Key, bool]] = []
    xq = FakeXQueue(None)
    other = Owner("course-b", owner.namespace, "uid-b")
    courses = [course(owner, spec, applied=2), course(other, spec, applied=1)]
    s = scaler(xq, events, clock, notes)
    with caplog.at_level(logging.INFO, logger="coursegrader_operator.scaler"):
        for _ in range(5):
            await s.tick(courses)
            clock.now += 6  # past the per-server skip window, so every tick really asks
        warnings = [r for r, _, w in events.items if w]
        assert warnings == ["XQueueUnreachable", "XQueueUnreachable"]  # one per CourseGrader
        assert all(c.scale.metrics_error for c in courses)
        down_lines = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down_lines) == 1 and down_lines[0].levelno == logging.WARNING  # one per server
        assert [c.applied.replicas for c in courses] == [2, 1]  # held
        xq.reply = QueueLoad(0, 0)
        await s.tick(courses)
        await s.tick(courses)
    assert events.reasons().count("XQueueReachable") == 2
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1
    assert all(c.scale.metrics_error is None and c.scale.outage is False for c in courses)
    xq.reply = None
    clock.now += 6
    await s.tick(courses)
    assert events.reasons().count("XQueueUnreachable") == 4  # a new outage is reported again
