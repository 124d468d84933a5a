"""The client's address behind trusted proxies (client_address.py), pure logic."""

from __future__ import annotations

from multidict import CIMultiDict

from xqueue_server.client_address import client_address, parse_networks

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
