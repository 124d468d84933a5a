"""The login-throttle policy (ratelimit.py), pure logic."""

from __future__ import annotations

from xqueue_server.ratelimit import (
    FailureWindow,
    LoginLimits,
    LoginState,
    retry_after_header,
    throttled_message,
    wait_seconds,
)

LIMITS = LoginLimits(window_seconds=60, per_pair=5, per_address=20, per_account=100)


def state(pair: tuple[int, float] | None = None, address: tuple[int, float] | None = None,
          account: tuple[int, float] | None = None, known: bool = False) -> LoginState:
    def window(value: tuple[int, float] | None) -> FailureWindow | None:
        return None if value is None else FailureWindow(*value)

    return LoginState(window(pair), window(address), window(account), known)


def test_no_failures_no_wait() -> None:
    assert wait_seconds(state(), LIMITS) == 0
    assert wait_seconds(state(pair=(4, 10), address=(19, 10), account=(99, 10)), LIMITS) == 0


def test_each_scope_blocks_until_its_window_closes() -> None:
    assert wait_seconds(state(pair=(5, 10)), LIMITS) == 50
    assert wait_seconds(state(address=(20, 45)), LIMITS) == 15
    assert wait_seconds(state(account=(100, 59.5)), LIMITS) == 0.5
    # The longest block wins.
    assert wait_seconds(state(pair=(5, 50), address=(20, 5)), LIMITS) == 55


def test_an_expired_window_no_longer_blocks() -> None:
    assert wait_seconds(state(pair=(50, 60)), LIMITS) == 0
    assert wait_seconds(state(account=(1000, 61)), LIMITS) == 0


def test_a_known_address_ignores_the_account_and_address_limits_but_not_its_own_pair() -> None:
    """The LMS keeps working from its usual address while its account is attacked from elsewhere;
    only failures of its own (account, address) pair slow it down."""
    attacked = state(address=(500, 1), account=(5000, 1), known=True)
    assert wait_seconds(attacked, LIMITS) == 0
    assert wait_seconds(state(pair=(5, 1), address=(500, 1), known=True), LIMITS) == 59
    assert wait_seconds(state(address=(500, 1), account=(5000, 1), known=False), LIMITS) == 59


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(12.2) == "13"
    assert throttled_message(12.2) == "Too many failed login attempts; try again in 13 seconds"
