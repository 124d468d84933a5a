"""Pure logic of abuse resistance: the login-throttle policy and the trusted-proxy client address."""

from __future__ import annotations

import re

import pytest
from multidict import CIMultiDict

from xqueue_server.client_address import client_address, parse_networks
from xqueue_server.config import ConfigError, load_settings
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


TRUSTED = parse_networks(("10.0.0.0/8", "127.0.0.1", "fd00::/8"))


def address(peer: str | None, real_ip: str | None = None, forwarded: tuple[str, ...] = (),
            trusted: tuple = TRUSTED) -> str:
    headers: CIMultiDict[str] = CIMultiDict()
    if real_ip is not None:
        headers["X-Real-IP"] = real_ip
    return client_address(peer, headers, trusted, forwarded)


def test_forwarded_headers_are_ignored_without_trusted_proxies() -> None:
    assert address("203.0.113.9", "10.1.1.1", ("10.2.2.2",), trusted=()) == "203.0.113.9"
    assert address("203.0.113.9", "10.1.1.1", ("10.2.2.2",)) == "203.0.113.9"  # peer not a proxy
    assert address(None, "10.1.1.1", trusted=()) == ""


def test_a_trusted_proxy_names_the_client() -> None:
    assert address("10.0.0.5", "198.51.100.7") == "198.51.100.7"
    assert address("127.0.0.1", " 198.51.100.7 ") == "198.51.100.7"
    assert address("10.0.0.5", "garbage") == "10.0.0.5"
    assert address("::ffff:10.0.0.5", "198.51.100.7") == "198.51.100.7"  # v4-mapped peer
    assert address("fd00::1", "2001:db8::1") == "2001:db8::1"


def test_x_forwarded_for_is_read_from_the_right_skipping_trusted_hops() -> None:
    # The client wrote "1.1.1.1" itself; the first untrusted hop from the right is the real one.
    assert address("10.0.0.5", forwarded=("1.1.1.1, 198.51.100.7, 10.3.3.3",)) == "198.51.100.7"
    assert address("10.0.0.5", forwarded=("1.1.1.1", "198.51.100.7")) == "198.51.100.7"  # repeated headers
    assert address("10.0.0.5", forwarded=("198.51.100.7:4431",)) == "198.51.100.7"
    assert address("10.0.0.5", forwarded=("[2001:db8::1]:4431",)) == "2001:db8::1"
    # Garbage: nothing from there on is believed.
    assert address("10.0.0.5", forwarded=("198.51.100.7, nonsense",)) == "10.0.0.5"
    # Every hop inside the trusted ranges (an LMS in the cluster network): the leftmost.
    assert address("10.0.0.5", forwarded=("10.9.9.9, 10.3.3.3",)) == "10.9.9.9"
    assert address("10.0.0.5") == "10.0.0.5"


def test_trusted_proxies_setting_is_validated() -> None:
    settings = load_settings(env={"XQUEUE_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    bad = re.escape("XQUEUE_TRUSTED_PROXIES: not an IP address or CIDR: 'example.com'")
    with pytest.raises(ConfigError, match=bad):
        load_settings(env={"XQUEUE_TRUSTED_PROXIES": "10.0.0.0/8,example.com"})
    with pytest.raises(ConfigError, match="XQUEUE_BODY_TIMEOUT_SECONDS must be positive"):
        load_settings(env={"XQUEUE_BODY_TIMEOUT_SECONDS": "0"})
