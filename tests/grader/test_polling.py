"""The pull rhythm of the grading slots: classic back-off and long-poll detection (pure)."""

from __future__ import annotations

from xqueue_grader.polling import FAST_EMPTY_STRIKES, LongPollState, next_poll_delay


def test_poll_delay_doubles_within_bounds() -> None:
    assert next_poll_delay(0.5, 0.5, 4) == 1.0
    assert next_poll_delay(3, 0.5, 4) == 4
    assert next_poll_delay(0.01, 0.5, 4) == 0.5


def test_long_poll_falls_back_after_fast_empty_replies_and_reprobes() -> None:
    state = LongPollState(20)
    assert state.wait(0) == 20
    for _ in range(FAST_EMPTY_STRIKES - 1):
        assert state.record_empty(20, 0.01, 0) is False
        assert state.wait(0) == 20
    state.record_empty(20, 0.01, 0)
    assert state.wait(1) is None  # fell back to classic polling
    assert state.wait(10_000) == 20  # and probes again later


def test_long_poll_that_waited_means_poll_again_at_once() -> None:
    state = LongPollState(2)
    assert state.record_empty(2, 2.0, 0) is True
    assert state.confirmed
    assert LongPollState(0).wait(0) is None
