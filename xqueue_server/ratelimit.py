"""Failed-login throttling: the policy, as pure functions (the counters live in PostgreSQL).

Design. Guessing passwords must be slow, but an attacker must not be able to lock the real LMS (or a
grader) out of its account, since a locked-out LMS means students cannot submit. So failures are
counted in three scopes, each in a short fixed window (default 60 s), and a password is not even
checked while a scope is over its limit:

- **(account, address) pair** (default 5 per window): the main brake. It only ever blocks the
  address that produced the failures, so an attacker elsewhere cannot touch the LMS's own pair.
- **address** (default 20): one address trying many accounts (password spraying).
- **account** (default 100): many addresses guessing one account (a botnet).

The address and account scopes do not apply to a *known* address: one the account logged in from
with the right password in the last 30 days. So the LMS keeps working from its usual address while
its account is under a distributed attack, and a noisy neighbour behind the same address cannot
block it either; only failures of that very pair (wrong password from the LMS's own address) can.
Sessions are never throttled: the LMS and the graders log in once and keep their session, so even
a throttled login only delays new sessions. Blocks end by themselves when the window closes; no
administrator has to unlock anything, and an attacker's refused attempts do not extend a block.

A correct password inside a block is refused like a wrong one (otherwise the block would be an
oracle for guesses). Unknown usernames count like known ones, so spraying random names is limited
and names cannot be told apart by throttling.

State: PostgreSQL, not per process. Replicas behind a round-robin Service then share one budget (with
per-process counters an attacker would get N times the attempts against N replicas), blocks survive
restarts, and "known address" is remembered across replicas. The cost is one indexed read per
password check, folded into the account lookup the check needs anyway, and one write per failure
(bounded by the limits above) or per first success from an address.

Client addresses come from ``client_address.py``: forwarded headers count only from configured
proxies, otherwise every client behind one proxy would share (and exhaust) one address budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KNOWN_ADDRESS_SECONDS = 30 * 24 * 3600.0  # a successful login keeps its address "known" this long


@dataclass(frozen=True)
class LoginLimits:
    window_seconds: float = 60.0
    per_pair: int = 5
    per_address: int = 20
    per_account: int = 100


@dataclass(frozen=True)
class FailureWindow:
    failures: int
    age_seconds: float  # since the window opened


@dataclass(frozen=True)
class LoginState:
    pair: FailureWindow | None
    address: FailureWindow | None
    account: FailureWindow | None
    known_address: bool


def wait_seconds(state: LoginState, limits: LoginLimits) -> float:
    """How long the password check must wait (0: check now)."""
    scopes = [(state.pair, limits.per_pair)]
    if not state.known_address:
        scopes += [(state.address, limits.per_address), (state.account, limits.per_account)]
    waits = [
        limits.window_seconds - window.age_seconds
        for window, limit in scopes
        if window is not None and window.age_seconds < limits.window_seconds and window.failures >= limit
    ]
    return max(waits, default=0.0)


def retry_after_header(seconds: float) -> str:
    """The Retry-After value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def throttled_message(seconds: float) -> str:
    return f"Too many failed login attempts; try again in {retry_after_header(seconds)} seconds"
