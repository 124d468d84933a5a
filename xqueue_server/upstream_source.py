"""Reading an upstream XQueue database, given as a URL: ``mysql://`` (MySQL/MariaDB, what upstream
deploys, via PyMySQL), ``postgresql://`` (asyncpg) or ``sqlite:///path``. Read-only: nothing is written
there. The queries are in ``sql/upstream_import.sql``; the mapping is ``upstream_import.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from .db import SQL_DIR, load_queries
from .upstream_import import UpstreamData, UpstreamSubmission, UpstreamUser

QUERIES = load_queries((SQL_DIR / "upstream_import.sql").read_text())
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 300


class SourceError(Exception):
    """The upstream database cannot be read; the message holds no password."""


Rows = Sequence[Sequence[Any]]  # read-only: a list of tuples is one


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("mysql", "mariadb", "mysql+pymysql"):
        return "mysql"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    if scheme == "sqlite":
        return "sqlite"
    raise SourceError(f"unsupported upstream database URL scheme {scheme!r}: use mysql://, postgresql:// or "
                      "sqlite:///path")


def _read_mysql(url: str) -> tuple[Rows, Rows | None, Rows]:
    import pymysql  # only needed for this source

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    try:
        conn = pymysql.connect(
            host=parts.hostname or "localhost",
            port=parts.port or 3306,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=unquote(parts.path.lstrip("/")),
            unix_socket=query.get("unix_socket", [None])[0],
            charset=query.get("charset", ["utf8mb4"])[0],
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            read_timeout=READ_TIMEOUT_SECONDS,
        )
    except pymysql.MySQLError as exc:
        raise SourceError(f"cannot connect to the upstream MySQL database: {exc.args[-1]}") from None
    try:
        with conn.cursor() as cur:
            users = _fetch(cur, "upstream_users")
            groups = _fetch_optional(cur, "upstream_groups", pymysql.MySQLError)
            submissions = _fetch(cur, "upstream_submissions")
        return users, groups, submissions
    except pymysql.MySQLError as exc:
        raise SourceError(f"cannot read the upstream MySQL database: {exc.args[-1]}") from None
    finally:
        conn.close()


def _read_sqlite(url: str) -> tuple[Rows, Rows | None, Rows]:
    path = sqlite_path(url)
    try:
        # Read-only, and never create an empty database for a mistyped path.
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                               timeout=CONNECT_TIMEOUT_SECONDS)
    except sqlite3.Error as exc:
        raise SourceError(f"cannot open the upstream SQLite database {path}: {exc}") from None
    try:
        cur = conn.cursor()
        users = _fetch(cur, "upstream_users")
        groups = _fetch_optional(cur, "upstream_groups", sqlite3.Error)
        submissions = _fetch(cur, "upstream_submissions")
        return users, groups, submissions
    except sqlite3.Error as exc:
        raise SourceError(f"cannot read the upstream SQLite database: {exc}") from None
    finally:
        conn.close()


def sqlite_path(url: str) -> str:
    """SQLAlchemy's spelling: ``sqlite:///relative/path``, ``sqlite:////absolute/path``."""
    rest = unquote(url.split("?", 1)[0][len("sqlite:"):])
    if rest.startswith("////"):
        return "/" + rest.lstrip("/")
    if rest.startswith("///") and len(rest) > 3:
        return rest[3:]
    raise SourceError("an SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")


def _fetch(cur: Any, name: str) -> Rows:
    cur.execute(QUERIES[name])
    return list(cur.fetchall())


def _fetch_optional(cur: Any, name: str, error: type[Exception]) -> Rows | None:
    """None when the tables are missing (an upstream without Django's auth groups)."""
    try:
        return _fetch(cur, name)
    except error:
        return None


async def _read_postgresql(url: str) -> tuple[Rows, Rows | None, Rows]:
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise SourceError(f"cannot connect to the upstream PostgreSQL database: {type(exc).__name__}: {exc}") from None
    try:
        users = [tuple(r) for r in await conn.fetch(QUERIES["upstream_users"], timeout=READ_TIMEOUT_SECONDS)]
        try:
            groups: Rows | None = [tuple(r) for r in await conn.fetch(QUERIES["upstream_groups"])]
        except asyncpg.UndefinedTableError:
            groups = None
        submissions = [tuple(r) for r in await conn.fetch(QUERIES["upstream_submissions"],
                                                          timeout=READ_TIMEOUT_SECONDS)]
        return users, groups, submissions
    except asyncpg.PostgresError as exc:
        raise SourceError(f"cannot read the upstream PostgreSQL database: {type(exc).__name__}: {exc}") from None
    finally:
        await conn.close()


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)  # SQLite keeps Django's datetimes as text
    return datetime.fromisoformat(text.replace(" ", "T", 1)) if text else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def to_data(users: Rows, groups: Rows | None, submissions: Rows) -> UpstreamData:
    """Rows as the queries return them (any driver) into the mapping's input."""
    by_user: dict[str, list[str]] = {}
    for username, group in groups or ():
        by_user.setdefault(_text(username), []).append(_text(group))
    return UpstreamData(
        users=[UpstreamUser(int(r[0]), _text(r[1]), _text(r[2]), bool(r[3]), bool(r[4]), bool(r[5])) for r in users],
        submissions=[
            UpstreamSubmission(
                id=int(r[0]), requester_id=_text(r[1]), lms_callback_url=_text(r[2]), queue_name=_text(r[3]),
                xqueue_header=_text(r[4]), xqueue_body=_text(r[5]), s3_urls=_text(r[6]),
                arrival_time=_time(r[7]) or datetime.fromtimestamp(0), pull_time=_time(r[8]),
                push_time=_time(r[9]), return_time=_time(r[10]), grader_reply=_text(r[11]),
            )
            for r in submissions
        ],
        groups=by_user,
    )


async def read_upstream(url: str) -> UpstreamData:
    scheme = scheme_of(url)
    if scheme == "postgresql":
        rows = await _read_postgresql(url)
    elif scheme == "mysql":
        rows = await asyncio.to_thread(_read_mysql, url)
    else:
        rows = await asyncio.to_thread(_read_sqlite, url)
    try:
        return to_data(*rows)
    except (ValueError, TypeError) as exc:
        raise SourceError(f"unexpected data in the upstream database: {exc}") from None
