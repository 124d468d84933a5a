"""Accounts: password hashing, session and API-token secrets, per-queue permissions.

Passwords are hashed with scrypt (memory-hard, salted; in the standard library). Session cookies and
API tokens are random secrets of which only a SHA-256 digest is stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import asyncpg

from .db import Account, Database

# scrypt cost: ~16 MiB and some tens of ms per hash, the usual interactive-login setting.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64)
        expected = base64.b64decode(digest_b64)
        digest = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected), maxmem=2**27
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def can_pull(account: Account, queue_name: str) -> bool:
    return account.is_admin or account.pull_queues is None or queue_name in account.pull_queues


def can_submit(account: Account, queue_name: str) -> bool:
    return account.is_admin or account.submit_queues is None or queue_name in account.submit_queues


def pull_scope(account: Account) -> tuple[str, ...] | None:
    """The queues whose submissions an account may touch (pull, answer); None = every queue."""
    return None if account.is_admin else account.pull_queues


def visible_queues(account: Account, names: list[str]) -> list[str]:
    """Queue names an account may learn about (upstream shows all of them to everyone)."""
    if account.is_admin or (account.pull_queues is None and account.submit_queues is None):
        return names
    allowed = set(account.pull_queues or ()) | set(account.submit_queues or ())
    return [n for n in names if n in allowed]


@dataclass
class _CacheEntry:
    account: Account | None
    expires: float


class Authenticator:
    """Resolves credentials to accounts, with short in-process caches.

    The caches only save repeated work per request (a session lookup, a deliberately slow scrypt
    verification for HTTP Basic); they hold an entry for seconds, so a logout or password change on
    another replica takes effect within that time.
    """

    def __init__(self, db: Database, session_max_age: float, cache_seconds: float = 2.0) -> None:
        self.db = db
        self.session_max_age = session_max_age
        self.cache_seconds = cache_seconds
        self._sessions: dict[str, _CacheEntry] = {}
        self._basic: dict[str, _CacheEntry] = {}
        self._tokens: dict[str, _CacheEntry] = {}

    def _cached(self, cache: dict[str, _CacheEntry], key: str) -> _CacheEntry | None:
        entry = cache.get(key)
        if entry is not None and entry.expires > time.monotonic():
            return entry
        if entry is not None:
            cache.pop(key, None)
        return None

    def _remember(self, cache: dict[str, _CacheEntry], key: str, account: Account | None, ttl: float) -> None:
        if len(cache) > 10_000:  # bound memory under a flood of distinct credentials
            cache.clear()
        cache[key] = _CacheEntry(account, time.monotonic() + ttl)

    async def check_password(self, username: str, password: str) -> Account | None:
        found = None if "\x00" in username else await self.db.get_account_with_hash(username)
        if found is None:
            # Spend the same time as a real check so usernames cannot be probed by timing.
            await asyncio.to_thread(verify_password, password, _DUMMY_HASH)
            return None
        account, encoded, active = found
        ok = await asyncio.to_thread(verify_password, password, encoded)
        return account if ok and active else None

    async def basic(self, username: str, password: str) -> Account | None:
        key = digest_secret(f"{username}\0{password}")
        entry = self._cached(self._basic, key)
        if entry is not None:
            return entry.account
        account = await self.check_password(username, password)
        # Short: a deleted or changed account must stop working within seconds on every replica.
        self._remember(self._basic, key, account, self.cache_seconds)
        return account

    async def login(self, account: Account) -> str | None:
        """A new session secret, or None when the account was deleted in the meantime."""
        secret = new_secret()
        try:
            await self.db.create_session(digest_secret(secret), account.id, self.session_max_age)
        except asyncpg.ForeignKeyViolationError:
            return None
        return secret

    async def session(self, secret: str) -> Account | None:
        key = digest_secret(secret)
        entry = self._cached(self._sessions, key)
        if entry is not None:
            return entry.account
        account = await self.db.session_account(key)
        self._remember(self._sessions, key, account, self.cache_seconds)
        return account

    async def logout(self, secret: str) -> None:
        key = digest_secret(secret)
        self._sessions.pop(key, None)
        await self.db.delete_session(key)

    async def token(self, secret: str) -> Account | None:
        key = digest_secret(secret)
        entry = self._cached(self._tokens, key)
        if entry is not None:
            return entry.account
        account = await self.db.token_account(key)
        self._remember(self._tokens, key, account, self.cache_seconds)
        return account


_DUMMY_HASH = hash_password("not a real password")
