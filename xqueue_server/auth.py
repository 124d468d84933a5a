"""Accounts: password hashing, session and API-token secrets, per-queue permissions, and who is calling
(``current_account``: session cookie, Bearer token or HTTP Basic).

Passwords are hashed with scrypt (memory-hard, salted; in the standard library). Session cookies and
API tokens are random secrets of which only a SHA-256 digest is stored.

What is cached, per process: which account a session cookie belongs to (``db.CredentialsCache``).
Every change to accounts or sessions is announced on the ``xqueue_credentials`` NOTIFY channel
(migration 0006); the LISTEN connection (``db.Database.listen``) clears the cache on each one, this
process's own changes clear it at once, and the cache is off while that connection is down. An entry
lives at most 5 s (``CredentialsCache.MAX_SECONDS``) and never beyond its session's expiry, so even a
notification lost on a silently broken connection is outlived by at most 5 s. API tokens are not
cached; HTTP Basic remembers only a verified password together with the hash it matched (see
``Authenticator``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import secrets

from aiohttp import web

from . import passwords, upstream_writer
from .abuse import throttled_error
from .config import Settings
from .context import AppContext, client_ip
from .db import Account, AccountMissing, Database, DatabaseError, driver_errors
from .metrics import Metrics
from .outage import DatabaseUnavailable
from .ratelimit import LoginLimits, throttled_message, wait_seconds

# scrypt cost: ~16 MiB and some tens of ms per hash, the usual interactive-login setting.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1

log = logging.getLogger("xqueue.auth")

ACCOUNT_KEY: web.RequestKey[Account | None] = web.RequestKey("xqueue_account", Account | None)  # type: ignore[arg-type]


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    if passwords.is_django_hash(encoded):  # imported from upstream XQueue; replaced at first login
        return passwords.verify_django_password(password, encoded)
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


async def hash_for(db: Database, username: str, password: str) -> str:
    """The hash to store for ``password``: the stored one when it already matches.

    Storing a new hash ends the account's sessions (``upsert_account``), so idempotent provisioning
    (the operator re-applies its grader accounts hourly, the Helm admin Job and the users file run at
    every start) must not count as a password change.
    """
    found = await db.get_account_with_hash(username)
    if found is not None and await asyncio.to_thread(verify_password, password, found[1]):
        return found[1]
    return await asyncio.to_thread(hash_password, password)


class LoginThrottled(Exception):
    """Too many failed password checks for this username or address; retry after ``retry_after`` s."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(throttled_message(retry_after))
        self.message = throttled_message(retry_after)
        self.retry_after = retry_after


def _throttle_name(username: str) -> str:
    # The name as typed goes into the throttle tables; one PostgreSQL cannot store (NUL) or that is
    # absurdly long is replaced by a digest, so it is still counted.
    if "\x00" in username or len(username) > 256:
        return "?" + hashlib.sha256(username.encode(errors="surrogatepass")).hexdigest()
    return username


class Authenticator:
    """Resolves credentials to accounts.

    API tokens are looked up in PostgreSQL on every request (one indexed query), so a revocation on
    any replica holds on every replica from the next request on. Sessions are looked up the same way
    unless this process remembered the answer (``db.CredentialsCache``): a logout, a password change,
    a deactivation or a deletion on any replica reaches the others by NOTIFY, within 5 s at worst.

    HTTP Basic would cost a deliberately slow scrypt on every request, so a successful verification
    is remembered, but only together with the stored hash it matched. The account row (hash,
    is_active, permissions) is still read on every request, so a new password (new hash), a deleted
    or a deactivated account is refused at once on every replica as well.
    """

    def __init__(self, db: Database, session_max_age: float, limits: LoginLimits, metrics: Metrics) -> None:
        self.db = db
        self.session_max_age = session_max_age
        self.limits = limits
        self.metrics = metrics
        self._verified: dict[bytes, str] = {}  # keyed digest of (username, password) -> hash it matched
        self._cache_key = secrets.token_bytes(32)
        self._session_digests: dict[str, str] = {}

    def _credentials_key(self, username: str, password: str) -> bytes:
        # Keyed with a per-process secret: the cache holds nothing that helps to guess the password.
        return hmac.new(self._cache_key, f"{username}\0{password}".encode(), hashlib.sha256).digest()

    async def check_password(self, username: str, password: str, address: str = "",
                             method: str = "login") -> Account | None:
        """The account, or None for wrong credentials; raises LoginThrottled (see ratelimit.py)
        without checking the password while (username, address) is over a failure limit."""
        name = _throttle_name(username)
        found, state = await self.db.login_state(name, address)
        wait = wait_seconds(state, self.limits)
        if wait > 0:
            self.metrics.login_failures.labels(method, "throttled").inc()
            raise LoginThrottled(wait)
        # Parallel attempts that pass the check together are all verified; the few threads running
        # scrypt bound that overshoot of the limits.
        account = await self._verify(found, username, password)
        if account is None:
            self.metrics.login_failures.labels(method, "bad_credentials").inc()
            await self.db.record_login_failure(name, address, self.limits.window_seconds)
            return None
        if not state.known_address or state.pair is not None:
            await self.db.record_login_success(account.id, name, address)
        return account

    async def _verify(self, found: tuple[Account, str, bool] | None, username: str, password: str) -> Account | None:
        if found is None:
            # Spend the same time as a real check so usernames cannot be probed by timing.
            await asyncio.to_thread(verify_password, password, _DUMMY_HASH)
            return None
        account, encoded, active = found
        key = self._credentials_key(username, password)
        if self._verified.get(key) != encoded:
            if not await asyncio.to_thread(verify_password, password, encoded):
                return None
            if active and passwords.is_django_hash(encoded):
                encoded = await self._rehash(account, encoded, password)
            if len(self._verified) > 10_000:  # bound memory under a flood of distinct credentials
                self._verified.clear()
            self._verified[key] = encoded
        return account if active else None

    async def _rehash(self, account: Account, django_hash: str, password: str) -> str:
        """Store our hash in place of an imported Django one (its password just matched); the hash
        the account now has. A failure only postpones this to the next login."""
        ours = await asyncio.to_thread(hash_password, password)
        try:
            with driver_errors():
                replaced = await upstream_writer.rehash_password(self.db, account.id, django_hash, ours)
        except (DatabaseUnavailable, OSError, DatabaseError) as exc:
            log.warning("could not replace an imported password hash; trying again at the next login",
                        extra={"fields": {"account": account.username, "error": type(exc).__name__}})
            return django_hash
        if replaced:
            log.info("imported password hash replaced by ours", extra={"fields": {"account": account.username}})
        return ours if replaced else django_hash

    async def basic(self, username: str, password: str, address: str = "") -> Account | None:
        return await self.check_password(username, password, address, method="basic")

    async def login(self, account: Account) -> str | None:
        """A new session secret, or None when the account was deleted in the meantime."""
        secret = new_secret()
        try:
            await self.db.create_session(digest_secret(secret), account.id, self.session_max_age)
        except AccountMissing:
            return None
        return secret

    async def session(self, secret: str) -> Account | None:
        # Every request of a logged-in client hashes the same secret again: remember its digest
        # (bounded; the secret is in this process's memory for each request anyway).
        digest = self._session_digests.get(secret)
        if digest is None:
            digest = digest_secret(secret)
            if len(self._session_digests) >= 10_000:
                self._session_digests.clear()
            self._session_digests[secret] = digest
        return await self.db.session_account(digest)

    async def logout(self, secret: str) -> None:
        await self.db.delete_session(digest_secret(secret))

    async def token(self, secret: str) -> Account | None:
        return await self.db.token_account(digest_secret(secret))


_DUMMY_HASH = hash_password("not a real password")


# ---------------------------------------------------------------- requests: who is calling
def set_session_cookie(response: web.Response, secret: str, settings: Settings) -> None:
    response.set_cookie(
        "sessionid", secret, max_age=settings.session_max_age_seconds, httponly=True, samesite="Lax",
        secure=settings.session_cookie_secure, path="/",
    )


def _basic_credentials(header: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else None


_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _session_cookie(request: web.Request) -> str | None:
    """The ``sessionid`` cookie; aiohttp's ``request.cookies`` parses every cookie through
    http.cookies, a noticeable share of a request's CPU. Our secrets are URL-safe tokens: a plain
    ``sessionid=<token>`` is read directly, anything else (quoted, repeated) goes to the full parser."""
    header = request.headers.get("Cookie")
    if not header or "sessionid" not in header:
        return None
    found: str | None = None
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "sessionid":
            value = value.strip()
            if found is not None or not _TOKEN_CHARS.issuperset(value):
                return request.cookies.get("sessionid")
            found = value
    return found if found is not None else request.cookies.get("sessionid")


async def current_account(request: web.Request) -> Account | None:
    """The caller's account from its session cookie, Bearer token or HTTP Basic credentials.

    The session is tried first: the LMS may also send Basic credentials meant for a fronting proxy,
    which must not hide a valid session.
    """
    if ACCOUNT_KEY in request:
        return request[ACCOUNT_KEY]
    ctx = AppContext.of(request)
    account: Account | None = None
    secret = _session_cookie(request)
    if secret and len(secret) < 200:
        account = await ctx.auth.session(secret)
    header = request.headers.get("Authorization", "")
    if account is None and header[:7].lower() == "bearer " and len(header) < 500:
        account = await ctx.auth.token(header[7:].strip())
    if account is None and header[:6].lower() == "basic " and len(header) < 1000:
        credentials = _basic_credentials(header)
        if credentials is not None:
            try:
                account = await ctx.auth.basic(*credentials, client_ip(request))
            except LoginThrottled as exc:
                raise throttled_error(request.path, exc.message, exc.retry_after) from None
    request[ACCOUNT_KEY] = account
    return account
