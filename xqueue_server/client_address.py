"""The client's address: the TCP peer, or what a trusted proxy says it is.

``X-Real-IP`` and ``X-Forwarded-For`` are plain request headers any client can send. They are
believed only when the TCP peer is one of the configured proxies (``XQUEUE_TRUSTED_PROXIES``, CIDRs,
default none); otherwise a client could pick a fresh address per request and escape the login
throttle, or pose as a grader pod in the in-flight figures the operator scales down by.

Behind trusted proxies, ``X-Real-IP`` (what upstream XQueue and nginx use; the proxy must set it,
overwriting any value from the client) wins; without it ``X-Forwarded-For`` is read from the right,
skipping trusted proxies, and the first other address is the client (entries further left were
written by the client itself and prove nothing); when every entry is trusted, the leftmost.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=16)
def parse_networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError names the bad entry."""
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR: {cidr!r}") from None
    return tuple(networks)


@functools.lru_cache(maxsize=4096)  # the same few peers ask again and again; parsing is the cost
def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, networks: Iterable[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(peer: str | None, headers: Mapping[str, str], trusted: tuple[Network, ...],
                   forwarded_for: Iterable[str] = ()) -> str:
    """The client's address as text. ``forwarded_for``: every X-Forwarded-For header value, in order."""
    peer_address = _address(peer) if peer else None
    fallback = str(peer_address) if peer_address is not None else (peer or "")
    if not trusted or not _trusted(peer_address, trusted):
        return fallback
    real = headers.get("X-Real-IP")
    if real:
        address = _address(real)
        return str(address) if address is not None else fallback
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    address = None
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:  # garbage: nothing left of it can be trusted
            return fallback
        if not _trusted(address, trusted):
            return str(address)
    # Every hop is inside the trusted ranges (say an LMS in the cluster's own network): the leftmost.
    return str(address) if address is not None else fallback
