"""The one module that talks to PostgreSQL.

Queries come from ``sql/queries.sql`` (each under a ``-- name:`` line); migrations from
``sql/migrations/NNNN_*.sql``. Callers get plain Python values back, never build SQL themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from .batching import Batcher
from .outage import DatabaseHealth, DatabaseUnavailable, GuardedPool
from .ratelimit import KNOWN_ADDRESS_SECONDS, FailureWindow, LoginState

SQL_DIR = resources.files("xqueue_server") / "sql"
# A lock id of our own, so concurrent replicas never apply migrations twice.
MIGRATION_LOCK_ID = 0x58515545  # "XQUE"
DB_RETRY_SECONDS = 1.0  # pause between connection attempts while waiting for the database

# NOTIFY channels. The SQL in sql/ names them too (pg_notify in queries.sql and upstream_import.sql,
# the trigger of migration 0006); these are the names the LISTEN side uses.
SUBMISSIONS_CHANNEL = "xqueue_submissions"  # payload: a queue that may have work for a waiting grader
CALLBACKS_CHANNEL = "xqueue_callbacks"  # the outbox has callbacks due
CREDENTIALS_CHANNEL = "xqueue_credentials"  # an account or session changed (see CredentialsCache)

log = logging.getLogger("xqueue_server.db")


def load_queries(text: str) -> dict[str, str]:
    """Split a queries file into {name: sql} on ``-- name: <name>`` lines."""
    queries: dict[str, str] = {}
    parts = re.split(r"^-- name: *(\w+) *$", text, flags=re.MULTILINE)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip()
    return queries


QUERIES = load_queries((SQL_DIR / "queries.sql").read_text())


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration, in order."""
    found = []
    for entry in (SQL_DIR / "migrations").iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


class DatabaseError(Exception):
    """A statement the database refused or a connection the driver lost, in the server's terms.

    Raised by ``Database`` methods that translate driver errors (the driver's exception is the
    ``__cause__``), so no other module needs to know asyncpg's exception classes.
    """


class AccountMissing(DatabaseError):
    """The account a row was to refer to no longer exists (deleted concurrently)."""


@contextmanager
def driver_errors() -> Iterator[None]:
    """Driver errors raised in the block (a refused statement, a lost connection) become
    DatabaseError, for callers that use the database through other modules' queries."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(str(exc)) from exc


@dataclass(frozen=True)
class Account:
    id: int
    username: str
    is_admin: bool
    pull_queues: tuple[str, ...] | None  # None = unrestricted
    submit_queues: tuple[str, ...] | None


@dataclass(frozen=True)
class ClaimedSubmission:
    id: int
    pullkey: str
    xqueue_body: str
    files: dict[str, str]  # filename -> storage key
    was_expired: bool  # it had been pulled before and its lease ran out


@dataclass(frozen=True)
class NewSubmission:
    queue_name: str
    callback_url: str
    xqueue_header: str
    xqueue_body: str
    files: dict[str, str]  # filename -> storage key
    requester_id: str


@dataclass(frozen=True)
class StoredSubmission:
    id: int
    queue_length: int  # pullable submissions of its queue right after it was stored
    superseded: int  # earlier submissions of the same callback URL it retired (latest wins)


@dataclass(frozen=True)
class Pull:
    """One get_submission's claim: up to ``limit`` submissions for ``grader_id``."""
    grader_id: str
    limit: int


@dataclass(frozen=True)
class GraderReply:
    submission_id: int
    pullkey: str
    body: str


# What record_result made of a reply ('recorded', 'duplicate', 'missing' or 'bad_key'), with the
# callback this process is to deliver at once (only for 'recorded' with an inline claim).
RecordOutcome = tuple[str, "DueCallback | None"]


@dataclass(frozen=True)
class DueCallback:
    id: int
    submission_id: int | None
    kind: str
    url: str
    host: str  # "host:port" of url: deliveries are bounded per host
    xqueue_header: str
    xqueue_body: str
    attempts: int
    age_seconds: float


def _tuple_or_none(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _list_or_none(value: Sequence[str] | None) -> list[str] | None:
    return None if value is None else list(value)


def _intersect(a: tuple[str, ...] | None, b: Sequence[str] | None) -> tuple[str, ...] | None:
    if b is None:
        return a
    if a is None:
        return tuple(b)
    return tuple(q for q in a if q in b)


def _account(row: asyncpg.Record) -> Account:
    return Account(
        id=row["id"],
        username=row["username"],
        is_admin=row["is_admin"],
        pull_queues=_tuple_or_none(row["pull_queues"]),
        submit_queues=_tuple_or_none(row["submit_queues"]),
    )


class CredentialsCache:
    """Which account a session belongs to, remembered between requests of this process.

    Sound because PostgreSQL announces every change to accounts and sessions (migration 0006) on the
    LISTEN connection, which calls ``invalidate``; this process's own changes invalidate at once
    (``Database``). It is used only while that connection is up (``enable``), and an answer read
    before an invalidation is never stored after it (``generation``). An entry lives at most
    ``MAX_SECONDS`` and never beyond its session's expiry, which bounds staleness even if a
    notification were lost with a silently broken connection.
    """

    MAX_SECONDS = 5.0
    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self.enabled = False
        self.generation = 0
        self._entries: dict[str, tuple[Account, float]] = {}

    def get(self, key: str) -> Account | None:
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry[0]

    def put(self, key: str, account: Account, generation: int, valid_seconds: float) -> None:
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (account, time.monotonic() + min(self.MAX_SECONDS, valid_seconds))

    def invalidate(self, *_args: object) -> None:
        self.generation += 1
        self._entries.clear()

    def enable(self, enabled: bool) -> None:
        self.invalidate()
        self.enabled = enabled


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state of ours (no SET, LISTEN or held advisory locks; open
    transactions are still rolled back by asyncpg), so skip the default reset query: it would cost
    one extra round trip per query."""


class Database:
    def __init__(self, pool: GuardedPool | asyncpg.Connection, dsn: str, health: DatabaseHealth,
                 credentials: CredentialsCache | None = None) -> None:
        # Normally the guarded pool (connection errors become DatabaseUnavailable, answered 503, and
        # an outage is logged once); inside ``transaction`` the block's own connection.
        self.pool: Any = pool
        self.dsn = dsn
        self.health = health
        self.credentials = credentials or CredentialsCache()
        # Group commit of the hot statements (batching.py), on the pool only: a Database bound to one
        # connection (``transaction``) runs its statements itself, inside its transaction.
        self._batched = isinstance(pool, GuardedPool)
        self._inserts: Batcher[None, NewSubmission, StoredSubmission] = Batcher(
            lambda _key, items: self.insert_submissions(items),
            conflict=lambda item: (item.queue_name, item.callback_url),
            shared_errors=(DatabaseUnavailable,))
        self._claims: Batcher[tuple[str, float, int], Pull, list[ClaimedSubmission]] = Batcher(
            lambda key, pulls: self.claim_for_pulls(key[0], pulls, key[1], key[2]),
            shared_errors=(DatabaseUnavailable,), orphaned=self._release_orphaned_claims)
        self._replies: Batcher[tuple[tuple[str, ...] | None, float | None], GraderReply, RecordOutcome] = Batcher(
            lambda key, replies: self.record_results(replies, key[0], key[1]),
            conflict=lambda reply: reply.submission_id,
            shared_errors=(DatabaseUnavailable,))

    def batch_sizes(self) -> dict[str, tuple[int, int]]:
        """(statements, items) per batched kind so far: items / statements is the mean batch size."""
        return {name: (b.batches, b.items) for name, b in
                (("insert", self._inserts), ("claim", self._claims), ("reply", self._replies))}

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 2, max_size: int = 20, wait_seconds: float = 0.0) -> Database:
        """Open the pool; with ``wait_seconds``, keep retrying while the database is not up yet.

        Waiting matters in a cluster, where the migration step may start before PostgreSQL accepts
        connections. Only "not reachable yet" errors are retried; a wrong password fails at once.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                pool = await asyncpg.create_pool(
                    dsn, min_size=min_size, max_size=max_size, command_timeout=30, reset=_keep_session,
                    timeout=10,  # connect timeout: an unreachable host must not hold requests for a minute
                )
                health = DatabaseHealth()
                return cls(GuardedPool(pool, health), dsn, health)
            except (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError) as exc:
                if time.monotonic() + DB_RETRY_SECONDS > deadline:
                    raise
                log.warning("database not reachable yet (%s), retrying", type(exc).__name__)
                await asyncio.sleep(DB_RETRY_SECONDS)

    async def close(self) -> None:
        # Statements in flight carry requests' work (possibly committed already): let them finish.
        for batcher in (self._inserts, self._claims, self._replies):
            await batcher.close()
        # A connection still held by a cancelled task must not hang shutdown forever.
        try:
            await asyncio.wait_for(self.pool.close(), timeout=10)
        except TimeoutError:
            self.pool.terminate()

    # ------------------------------------------------------------------ migrations
    async def migrate(self) -> list[str]:
        """Apply pending migrations under an advisory lock; returns the names applied."""
        applied: list[str] = []
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for version, name, sql in migration_files():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                        )
                    applied.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        return applied

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    async def ping(self) -> bool:
        return bool(await self.pool.fetchval("SELECT 1", timeout=2))

    # ------------------------------------------------------------------ queues
    async def queue_exists(self, name: str) -> bool:
        return bool(await self.pool.fetchval(QUERIES["queue_exists"], name))

    async def list_queue_names(self) -> list[str]:
        return [r["name"] for r in await self.pool.fetch(QUERIES["list_queue_names"])]

    async def create_queue(self, name: str) -> bool:
        return await self.pool.fetchval(QUERIES["create_queue"], name) is not None

    async def delete_queue(self, name: str) -> bool:
        return await self.pool.fetchval(QUERIES["delete_queue"], name) is not None

    async def queue_stats(self, name: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(QUERIES["queue_stats"], name)
        return [
            {
                "name": r["name"],
                "queued": r["queued"],
                "in_flight": r["in_flight"],
                "oldest_queued_age_seconds": r["oldest_queued_age_seconds"],
            }
            for r in rows
        ]

    async def in_flight_by_grader(self, name: str) -> dict[str, int]:
        rows = await self.pool.fetch(QUERIES["in_flight_by_grader"], name)
        return {r["grader_id"] or "": r["in_flight"] for r in rows}

    async def queue_length(self, name: str) -> int:
        return int(await self.pool.fetchval(QUERIES["queue_length"], name))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Database]:
        """This database's queries on one connection, in one transaction committed when the block ends."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield Database(conn, self.dsn, self.health, self.credentials)

    # ------------------------------------------------------------------ submissions
    async def insert_submission(
        self,
        queue_name: str,
        callback_url: str,
        xqueue_header: str,
        xqueue_body: str,
        files: dict[str, str],
        requester_id: str,
    ) -> tuple[int, int, int]:
        """Store a submission; returns (id, queue length after insert, superseded count)."""
        item = NewSubmission(queue_name, callback_url, xqueue_header, xqueue_body, files, requester_id)
        if self._batched:
            stored = await self._inserts.submit(None, item)
        else:
            (stored,) = await self.insert_submissions([item])
        return stored.id, stored.queue_length, stored.superseded

    async def insert_submissions(self, items: Sequence[NewSubmission]) -> list[StoredSubmission]:
        """One statement for ``items`` (distinct queue and callback URL pairs), in order."""
        rows = await self.pool.fetch(
            QUERIES["insert_submissions"],
            [i.queue_name for i in items], [i.callback_url for i in items], [i.xqueue_header for i in items],
            [i.xqueue_body for i in items], [json.dumps(i.files) for i in items], [i.requester_id for i in items],
        )
        return [StoredSubmission(id=r["id"], queue_length=r["queue_length"], superseded=r["superseded"]) for r in rows]

    async def claim_submissions(
        self, queue_name: str, limit: int, lease_seconds: float, max_pulls: int, grader_id: str
    ) -> list[ClaimedSubmission]:
        pull = Pull(grader_id, limit)
        if self._batched:
            return await self._claims.submit((queue_name, float(lease_seconds), max_pulls), pull)
        (claimed,) = await self.claim_for_pulls(queue_name, [pull], lease_seconds, max_pulls)
        return claimed

    async def claim_for_pulls(
        self, queue_name: str, pulls: Sequence[Pull], lease_seconds: float, max_pulls: int
    ) -> list[list[ClaimedSubmission]]:
        """One statement for several pulls of a queue: each gets up to its limit, earlier pulls older rows."""
        graders = [p.grader_id for p in pulls for _ in range(p.limit)]
        owners = [n for n, p in enumerate(pulls) for _ in range(p.limit)]
        rows = await self.pool.fetch(
            QUERIES["claim_submissions"], queue_name, len(graders), float(lease_seconds), max_pulls, graders, owners
        )
        claimed: list[list[ClaimedSubmission]] = [[] for _ in pulls]
        for r in sorted(rows, key=lambda r: r["id"]):
            claimed[r["pull"]].append(ClaimedSubmission(
                id=r["id"],
                pullkey=r["pullkey"],
                xqueue_body=r["xqueue_body"],
                files=json.loads(r["files"]) if isinstance(r["files"], str) else dict(r["files"]),
                was_expired=r["was_expired"],
            ))
        return claimed

    async def _release_orphaned_claims(self, _key: object, _pull: Pull, claimed: list[ClaimedSubmission]) -> None:
        """A pull whose caller stopped waiting while its statement ran: nobody got these claims."""
        if claimed:
            await self.release_submissions([(c.id, c.pullkey) for c in claimed])

    async def release_submissions(self, claims: Sequence[tuple[int, str]]) -> int:
        """Undo claims (id, pullkey) whose grader never got them; returns how many were released."""
        row = await self.pool.fetchrow(
            QUERIES["release_submissions"], [c[0] for c in claims], [c[1] for c in claims]
        )
        return int(row["released"])

    async def record_result(
        self, submission_id: int, pullkey: str, body: str, queues: Sequence[str] | None = None,
        inline_seconds: float | None = None,
    ) -> RecordOutcome:
        """Store a grader reply. Returns ('recorded', 'duplicate', 'missing' or 'bad_key', callback).

        ``queues`` limits the submissions the caller may answer (None: any); one in another queue is
        'missing', so callers cannot tell a foreign submission from a non-existent one. With
        ``inline_seconds`` a recorded reply's callback comes back claimed for that long, for the caller
        to deliver at once (see record_results in queries.sql); otherwise the outbox workers get it."""
        reply = GraderReply(submission_id, pullkey, body)
        scope = None if queues is None else tuple(queues)
        inline = None if inline_seconds is None else float(inline_seconds)
        if self._batched:
            return await self._replies.submit((scope, inline), reply)
        (outcome,) = await self.record_results([reply], scope, inline)
        return outcome

    async def record_results(
        self, replies: Sequence[GraderReply], scope: Sequence[str] | None, inline: float | None
    ) -> list[RecordOutcome]:
        """One statement for ``replies`` (distinct submissions), and one more only if some were not recorded."""
        queues = None if scope is None else list(scope)
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(QUERIES["record_results"], [r.submission_id for r in replies],
                                    [r.pullkey for r in replies], [r.body for r in replies], queues, inline)
            recorded = {row["submission_id"]: row for row in rows}
            unrecorded = [r.submission_id for r in replies if r.submission_id not in recorded]
            current = {row["id"]: row for row in await conn.fetch(
                QUERIES["submission_key_states"], unrecorded, queues)} if unrecorded else {}
        outcomes: list[RecordOutcome] = []
        for reply in replies:
            row = recorded.get(reply.submission_id)
            if row is not None:
                callback = None
                if inline is not None:
                    callback = DueCallback(id=row["callback_id"], submission_id=reply.submission_id, kind="grade",
                                           url=row["url"], host=row["host"], xqueue_header=row["xqueue_header"],
                                           xqueue_body=reply.body, attempts=1, age_seconds=0.0)
                outcomes.append(("recorded", callback))
                continue
            state = current.get(reply.submission_id)
            if state is None:
                outcomes.append(("missing", None))
            elif state["pullkey"] == reply.pullkey and state["state"] in ("answered", "delivered"):
                # The same grader posting the same submission again (a retried request): already stored.
                outcomes.append(("duplicate", None))
            else:
                outcomes.append(("bad_key", None))
        return outcomes

    async def retire_poison(self, max_pulls: int, failure_body: str) -> list[tuple[int, str]]:
        rows = await self.pool.fetch(QUERIES["retire_poison_submissions"], max_pulls, failure_body)
        return [(r["id"], r["queue_name"]) for r in rows]

    async def delete_finished(self, days: float, batch: int = 1000) -> list[tuple[int, dict[str, str]]]:
        rows = await self.pool.fetch(QUERIES["delete_finished_submissions"], float(days), batch)
        return [(r["id"], json.loads(r["files"]) if isinstance(r["files"], str) else r["files"]) for r in rows]

    # ------------------------------------------------------------------ callbacks (outbox)
    async def claim_due_callbacks(
        self, limit: int, invisible_seconds: float, in_flight: dict[str, int], per_host: int
    ) -> list[DueCallback]:
        """Up to ``limit`` due callbacks, at most ``per_host`` per host counting ``in_flight`` ones."""
        hosts = list(in_flight)
        rows = await self.pool.fetch(QUERIES["claim_due_callbacks"], limit, float(invisible_seconds), hosts,
                                     [in_flight[h] for h in hosts], per_host)
        return [DueCallback(**dict(r)) for r in rows]

    async def mark_callback_delivered(self, callback_id: int) -> None:
        await self.pool.execute(QUERIES["mark_callback_delivered"], callback_id)

    async def mark_callbacks_delivered(self, callback_ids: Sequence[int]) -> None:
        await self.pool.execute(QUERIES["mark_callbacks_delivered"], sorted(callback_ids))

    async def unclaim_callback(self, callback_id: int) -> None:
        await self.pool.execute(QUERIES["unclaim_callback"], callback_id)

    async def schedule_callback_retry(self, callback_id: int, delay_seconds: float, error: str) -> None:
        await self.pool.execute(QUERIES["schedule_callback_retry"], callback_id, float(delay_seconds), error)

    async def mark_callback_dead(self, callback_id: int, error: str) -> None:
        await self.pool.execute(QUERIES["mark_callback_dead"], callback_id, error)

    async def list_dead_callbacks(self, limit: int = 1000) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(QUERIES["list_dead_callbacks"], limit)]

    async def redeliver_callbacks(self, ids: Sequence[int] | None) -> list[int]:
        rows = await self.pool.fetch(QUERIES["redeliver_callbacks"], None if ids is None else list(ids))
        if rows:
            await self.pool.execute("SELECT pg_notify($1, '')", CALLBACKS_CHANNEL)
        return [r["id"] for r in rows]

    async def callback_counts(self) -> dict[str, int]:
        return {r["state"]: r["count"] for r in await self.pool.fetch(QUERIES["callback_counts"])}

    async def oldest_pending_callback_age(self) -> float:
        return float(await self.pool.fetchval(QUERIES["oldest_pending_callback_age"]))

    # ------------------------------------------------------------------ accounts, sessions, tokens
    async def get_account_with_hash(self, username: str) -> tuple[Account, str, bool] | None:
        row = await self.pool.fetchrow(QUERIES["get_account_by_username"], username)
        if row is None:
            return None
        return _account(row), row["password_hash"], row["is_active"]

    async def upsert_account(
        self,
        username: str,
        password_hash: str,
        is_admin: bool = False,
        pull_queues: Sequence[str] | None = None,
        submit_queues: Sequence[str] | None = None,
    ) -> bool:
        row = await self.pool.fetchrow(
            QUERIES["upsert_account"],
            username,
            password_hash,
            is_admin,
            None if pull_queues is None else list(pull_queues),
            None if submit_queues is None else list(submit_queues),
        )
        self.credentials.invalidate()
        return bool(row["created"])

    async def set_password(self, username: str, password_hash: str) -> bool:
        changed = await self.pool.fetchval(QUERIES["set_password"], username, password_hash) is not None
        self.credentials.invalidate()
        return changed

    async def set_account_active(self, username: str, active: bool) -> bool:
        changed = await self.pool.fetchval(QUERIES["set_account_active"], username, active) is not None
        self.credentials.invalidate()
        return changed

    async def delete_account(self, username: str) -> bool:
        changed = await self.pool.fetchval(QUERIES["delete_account"], username) is not None
        self.credentials.invalidate()
        return changed

    async def list_accounts(self) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(QUERIES["list_accounts"])]

    async def create_session(self, key_hash: str, account_id: int, max_age_seconds: float) -> None:
        """Raises AccountMissing when the account was deleted in the meantime."""
        try:
            await self.pool.execute(QUERIES["create_session"], key_hash, account_id, float(max_age_seconds))
        except asyncpg.ForeignKeyViolationError as exc:
            raise AccountMissing(account_id) from exc

    async def session_account(self, key_hash: str) -> Account | None:
        cached = self.credentials.get(key_hash)
        if cached is not None:
            return cached
        generation = self.credentials.generation
        row = await self.pool.fetchrow(QUERIES["get_session_account"], key_hash)
        if row is None:
            return None
        account = _account(row)
        self.credentials.put(key_hash, account, generation, row["valid_seconds"])
        return account

    async def delete_session(self, key_hash: str) -> None:
        await self.pool.execute(QUERIES["delete_session"], key_hash)
        self.credentials.invalidate()

    async def delete_expired_sessions(self) -> None:
        """Expired sessions, and login-throttle state nobody needs any more."""
        await self.pool.execute(QUERIES["delete_expired_sessions"])
        await self.pool.execute(QUERIES["delete_stale_login_state"], KNOWN_ADDRESS_SECONDS)

    async def login_state(self, username: str, address: str) -> tuple[tuple[Account, str, bool] | None, LoginState]:
        """The account with its hash and is_active (None when unknown), and the throttle counters of
        (username, address)."""
        row = await self.pool.fetchrow(QUERIES["login_state"], username, address, KNOWN_ADDRESS_SECONDS)

        def window(scope: str) -> FailureWindow | None:
            failures = row[f"{scope}_failures"]
            return None if failures is None else FailureWindow(failures, row[f"{scope}_age"])

        state = LoginState(window("pair"), window("address"), window("account"), bool(row["known_address"]))
        found = None if row["id"] is None else (_account(row), row["password_hash"], row["is_active"])
        return found, state

    async def record_login_failure(self, username: str, address: str, window_seconds: float) -> None:
        await self.pool.execute(QUERIES["record_login_failure"], username, address, float(window_seconds))

    async def record_login_success(self, account_id: int, username: str, address: str) -> None:
        await self.pool.execute(QUERIES["record_login_success"], account_id, address, username)

    async def create_token(
        self,
        token_hash: str,
        account_id: int,
        pull_queues: Sequence[str] | None,
        submit_queues: Sequence[str] | None,
        ttl_seconds: float | None,
    ) -> int:
        return int(
            await self.pool.fetchval(
                QUERIES["create_token"],
                token_hash,
                account_id,
                None if pull_queues is None else list(pull_queues),
                None if submit_queues is None else list(submit_queues),
                None if ttl_seconds is None else float(ttl_seconds),
            )
        )

    async def token_account(self, token_hash: str) -> Account | None:
        row = await self.pool.fetchrow(QUERIES["get_token_account"], token_hash)
        if row is None:
            return None
        if row["touch"]:
            await self.pool.execute(QUERIES["touch_token"], row["token_id"])
        account = _account(row)
        # A token can only narrow what its account may do.
        return Account(
            id=account.id,
            username=account.username,
            is_admin=account.is_admin and row["token_pull_queues"] is None and row["token_submit_queues"] is None,
            pull_queues=_intersect(account.pull_queues, row["token_pull_queues"]),
            submit_queues=_intersect(account.submit_queues, row["token_submit_queues"]),
        )

    async def list_tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(QUERIES["list_tokens"], username)
        return [{**dict(r), "pull_queues": _list_or_none(r["pull_queues"]),
                 "submit_queues": _list_or_none(r["submit_queues"])} for r in rows]

    async def revoke_tokens(self, ids: Sequence[int] = (), username: str | None = None) -> list[int]:
        rows = await self.pool.fetch(QUERIES["revoke_tokens"], list(ids), username)
        return sorted(r["id"] for r in rows)

    async def get_secret(self, name: str) -> str | None:
        return await self.pool.fetchval(QUERIES["get_secret"], name)

    # ------------------------------------------------------------------ notifications
    @asynccontextmanager
    async def listen(self, on_submission: Callable[[str], None],
                     on_callbacks: Callable[[], None]) -> AsyncIterator[asyncpg.Connection]:
        """Hold a dedicated connection LISTENing on the three channels: ``on_submission(queue_name)``
        per submission notice, ``on_callbacks()`` when callbacks are due; credential changes
        invalidate ``self.credentials``."""
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn)

        def submissions(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_submission(payload)

        def callbacks(*_args: object) -> None:
            on_callbacks()

        try:
            await conn.add_listener(SUBMISSIONS_CHANNEL, submissions)
            await conn.add_listener(CALLBACKS_CHANNEL, callbacks)
            await conn.add_listener(CREDENTIALS_CHANNEL, self.credentials.invalidate)
            yield conn
        finally:
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError):
                conn.terminate()
