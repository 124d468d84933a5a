"""The other upstream databases (SQLite, PostgreSQL: Django runs on both) read into the same plan as
MariaDB, and the pure pieces of the import: Django password hashes and the mapping rules."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.importing import upstream_data as up
from xqueue_server import passwords
from xqueue_server.auth import verify_password
from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import create_database
from xqueue_server.upstream_import import Existing, UpstreamData, plan_import
from xqueue_server.upstream_source import SourceError, read_upstream, sqlite_path, to_data

CALLBACK = "http://lms.example.org/courses/demo/xqueue/1/{}/score_update".format

# Upstream's tables as Django creates them on SQLite and PostgreSQL ({bool} and {time} differ).
SCHEMA = """
CREATE TABLE auth_user (id integer PRIMARY KEY, password varchar(128) NOT NULL, last_login {time} NULL,
    is_superuser {bool} NOT NULL, username varchar(150) NOT NULL UNIQUE, first_name varchar(150) NOT NULL,
    last_name varchar(150) NOT NULL, email varchar(254) NOT NULL, is_staff {bool} NOT NULL,
    is_active {bool} NOT NULL, date_joined {time} NOT NULL);
CREATE TABLE auth_group (id integer PRIMARY KEY, name varchar(150) NOT NULL UNIQUE);
CREATE TABLE auth_user_groups (id integer PRIMARY KEY, user_id integer NOT NULL REFERENCES auth_user (id),
    group_id integer NOT NULL REFERENCES auth_group (id));
CREATE TABLE queue_submission (id integer PRIMARY KEY, requester_id varchar(128) NOT NULL,
    lms_callback_url varchar(128) NOT NULL, queue_name varchar(128) NOT NULL, xqueue_header varchar(1024) NOT NULL,
    xqueue_body text NOT NULL, s3_keys varchar(1024) NOT NULL, s3_urls varchar(1024) NOT NULL,
    arrival_time {time} NOT NULL, pull_time {time} NULL, push_time {time} NULL, return_time {time} NULL,
    grader_id varchar(128) NOT NULL, pullkey varchar(128) NOT NULL, grader_reply text NOT NULL,
    num_failures integer NOT NULL, lms_ack {bool} NOT NULL, retired {bool} NOT NULL);
"""


def summary(data: UpstreamData) -> dict[str, Any]:
    plan = plan_import(data, Existing())
    return {
        "accounts": sorted((a.username, a.is_admin, a.is_active) for a in plan.accounts),
        "submissions": [(s.upstream_id, s.state, s.arrival_time.tzinfo is not None) for s in plan.submissions],
        "skipped": sorted((s.kind, s.name) for s in plan.skipped),
        "groups": data.groups,
    }


EXPECTED_SUMMARY = {
    "accounts": [("edx-lms", False, True), ("old-grader", False, False), ("ops", True, True), ("watcher", False, True)],
    # upstream's arrival order: the graded one (70 min ago), pulled (55), waiting (50), matlab (10)
    "submissions": [(3, "answered", True), (1, "pending", True), (2, "pending", True), (8, "pending", True)],
    "skipped": sorted([("account", "legacy-bcrypt"), ("account", "no-password"), ("group", "watcher"),
                       ("submission", "#5 (python-3)"), ("submission", "#6 (python-3)"),
                       ("submission", "#7 (python-3)")]),
    "groups": {"watcher": ["graders"]},
}


def test_sqlite_upstream(tmp_path: Path) -> None:
    path = tmp_path / "xqueue.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.format(bool="bool", time="datetime"))
    tables = up.all_tables(CALLBACK)
    for rows in tables.values():
        for row in rows:  # Django's SQLite backend stores datetimes as text
            row.update({k: v.isoformat(" ") for k, v in row.items() if isinstance(v, datetime)})
    up.insert_all(conn.cursor(), "?", tables)
    conn.commit()
    conn.close()
    data = asyncio.run(read_upstream(f"sqlite:///{path}"))  # sqlite:/// + an absolute path = four slashes
    assert summary(data) == EXPECTED_SUMMARY
    with pytest.raises(SourceError, match="cannot open"):
        asyncio.run(read_upstream(f"sqlite:///{tmp_path}/missing.sqlite3"))
    assert not (tmp_path / "missing.sqlite3").exists()  # opened read-only: nothing created


def test_postgresql_upstream(postgres: LocalPostgres) -> None:
    url = create_database(postgres.url, prefix="upstream")

    async def fill() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(SCHEMA.format(bool="boolean", time="timestamp with time zone"))
            for table, rows in up.all_tables(CALLBACK).items():
                for row in rows:
                    values = [v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for v in row.values()]
                    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
                    await conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", *values)
        finally:
            await conn.close()

    asyncio.run(fill())
    assert summary(asyncio.run(read_upstream(url))) == EXPECTED_SUMMARY


def test_sqlite_urls() -> None:
    assert sqlite_path("sqlite:////var/lib/xqueue/db.sqlite3") == "/var/lib/xqueue/db.sqlite3"
    assert sqlite_path("sqlite:///xqueue.db") == "xqueue.db"
    with pytest.raises(SourceError):
        sqlite_path("sqlite://")


def test_django_pbkdf2_hashes() -> None:
    # RFC 6070's PBKDF2-HMAC-SHA1 vector (P="password", S="salt", c=4096) in Django's format.
    digest = bytes.fromhex("4b007901b765489abead49d926f721d065a429c1")
    rfc = "pbkdf2_sha1$4096$salt$" + base64.b64encode(digest).decode()
    assert passwords.verify_django_password("password", rfc)
    assert not passwords.verify_django_password("Password", rfc)
    encoded = passwords.make_django_password("pässwörd", "abc123", 20_000)
    assert encoded.startswith("pbkdf2_sha256$20000$abc123$")
    assert verify_password("pässwörd", encoded)  # what login uses
    assert not verify_password("passwörd", encoded)
    assert not verify_password("\ud800", encoded)  # a lone surrogate from a client is just wrong
    for broken in ("pbkdf2_sha256$20000$abc123$", "pbkdf2_sha256$x$abc$AAAA", "pbkdf2_sha256$20000$$AAAA",
                   "pbkdf2_sha256$99999999999$abc$AAAA", "pbkdf2_sha256$20000$abc$not base64!", "pbkdf2_sha256$1"):
        assert not passwords.verify_django_password("x", broken)
        assert passwords.unsupported_reason(broken) is not None
    assert passwords.unsupported_reason(encoded) is None
    assert "argon2" in (passwords.unsupported_reason("argon2$argon2id$v=19$m=102400,t=2,p=8$c2FsdA$aGFzaA") or "")
    assert "no usable password" in (passwords.unsupported_reason("!abcdef") or "")
    assert "unrecognised" in (passwords.unsupported_reason("5f4dcc3b5aa765d61d8327deb882cf99") or "")


def test_mapping_rules() -> None:
    data = _rows()
    plan = plan_import(data, Existing())
    by_id = {s.upstream_id: s for s in plan.submissions}
    graded = by_id[3]
    assert graded.state == "answered" and json.loads(graded.grader_reply or "") == up.REPLY
    assert by_id[1].was_pulled and not by_id[2].was_pulled
    assert plan.queues == ["matlab", "python-3"]
    # What is here already is left alone and counted, not reported as a problem.
    existing = Existing(usernames=frozenset({"edx-lms"}), queues=frozenset({"python-3"}),
                        submissions=frozenset({("python-3", by_id[2].xqueue_header)}),
                        pending_callbacks=frozenset({("matlab", by_id[8].lms_callback_url)}))
    again = plan_import(data, existing, ["extra"], admins=False)
    assert "edx-lms" not in {a.username for a in again.accounts}
    assert not any(a.is_admin for a in again.accounts)
    assert [s.upstream_id for s in again.submissions] == [3, 1]
    assert again.queues == ["extra", "matlab"]
    assert ("submission", "#8 (matlab)") in {(s.kind, s.name) for s in again.skipped}
    assert {(s.kind, s.name) for s in again.unchanged} == {("account", "edx-lms"), ("submission", "#2 (python-3)")}


def _rows() -> UpstreamData:
    """The test data as the readers pass it on (tuples, MySQL's 0/1 for booleans, naive UTC times)."""
    users = [(u["id"], u["username"], u["password"], int(u["is_active"]), int(u["is_superuser"]), int(u["is_staff"]))
             for u in up.users()]
    columns = ("id", "requester_id", "lms_callback_url", "queue_name", "xqueue_header", "xqueue_body", "s3_urls",
               "arrival_time", "pull_time", "push_time", "return_time", "grader_reply")
    subs = [tuple(r[c] for c in columns) for r in up.submissions(CALLBACK) if not r["retired"]]
    return to_data(users, [("watcher", "graders")], subs)


def test_text_report_lists_at_most_a_hundred_submissions_but_every_skip() -> None:
    from dataclasses import replace

    from xqueue_server.upstream_import import render_report
    data = _rows()
    many = [replace(data.submissions[1], id=1000 + i, lms_callback_url=CALLBACK(i),
                    xqueue_header=json.dumps({"lms_callback_url": CALLBACK(i), "lms_key": str(i), "queue_name": "q"}))
            for i in range(150)]
    plan = plan_import(UpstreamData(users=[], submissions=many + data.submissions), Existing())
    report = render_report(plan, dry_run=False)
    assert report.startswith("imported 0 account(s), 2 queue(s), 154 submission(s)")  # 150 + the test data's 4
    assert len([line for line in report.splitlines() if line.startswith("  submission #") and " -> " in line]) == 100
    assert "... and 54 more submission(s)" in report
    assert report.count("\n  submission ") == 100 + 3  # and the 3 skipped ones, each listed with its reason
