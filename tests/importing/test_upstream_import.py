"""Switching over from upstream XQueue: ``xqueue-admin import-xqueue`` reads upstream's MariaDB
(a real server, upstream's schema, data shaped like a live one) into a real server of ours. The LMS
then logs in with its old password, the waiting submissions are graded over HTTP and their callbacks
reach the LMS at the original URLs with the original keys. Re-running imports nothing twice; a dry
run writes nothing; the report says what was skipped and why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
import requests

from tests.importing import upstream_data as up
from tests.integration.clients import GraderClient, LMSClient
from xqueue_server.testing import FakeLMS, ServerThread

pytestmark = pytest.mark.slow


def import_xqueue(server: ServerThread, *args: str, env: dict[str, str] | None = None
                  ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XQUEUE_DATABASE_URL": server.settings.database_url or "", **(env or {})}
    return subprocess.run([sys.executable, "-m", "xqueue_server.cli", "import-xqueue", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def fetch(server: ServerThread, sql: str, *params: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(server.settings.database_url)
        try:
            return await conn.fetch(sql, *params)
        finally:
            await conn.close()
    return server.run(run())


def snapshot(server: ServerThread) -> dict[str, Any]:
    return {
        "accounts": sorted((r["username"], r["password_hash"]) for r in fetch(server, "SELECT * FROM accounts")),
        "queues": sorted(r["name"] for r in fetch(server, "SELECT name FROM queues")),
        "submissions": sorted(tuple(r) for r in fetch(
            server, "SELECT id, queue_name, state, xqueue_header FROM submissions")),
        "callbacks": sorted(tuple(r) for r in fetch(server, "SELECT id, state FROM callbacks")),
    }


def login(server: ServerThread, username: str, password: str) -> dict[str, Any]:
    return requests.post(f"{server.url}/xqueue/login/", data={"username": username, "password": password},
                         timeout=30).json()


def stored_hash(server: ServerThread, username: str) -> str:
    return fetch(server, "SELECT password_hash FROM accounts WHERE username = $1", username)[0]["password_hash"]


def grade_all(grader: GraderClient, queue: str, upstream_bodies: dict[int, str]) -> list[int]:
    """Pull and answer until the queue is empty; the upstream ids in the order they were handed out,
    checking that each body is upstream's, unchanged."""
    ids: list[int] = []
    for _ in range(10):
        item = grader.pull(queue)
        if item is None:
            return ids
        [sid] = [i for i, body in upstream_bodies.items() if body == item["xqueue_body"]]
        ids.append(sid)
        reply = grader.put_result(item["xqueue_header"], {"correct": True, "score": 1, "msg": "<p>ok</p>"})
        assert reply["return_code"] == 0, reply
    raise AssertionError("queue never emptied")


def test_import_then_login_with_old_password_and_grade(
        xqueue_factory: Callable[..., ServerThread], fake_lms: FakeLMS, upstream_mysql: str) -> None:
    server = xqueue_factory()
    result = import_xqueue(server, upstream_mysql, "--queue", "spare-queue")
    assert result.returncode == 0, result.stderr
    report = result.stdout
    assert "imported 4 account(s), 3 queue(s), 4 submission(s)" in report, report
    assert up.OPS_USER + " (admin)" in report and "old-grader (inactive)" in report, report

    # The graded-but-unacknowledged submission needs no grader: its callback goes out at once.
    graded = fake_lms.wait_for(lambda cbs: any(c.xqueue_header.get("lms_key") == "lms-key-graded" for c in cbs),
                               timeout=30)
    [callback] = [c for c in graded if c.xqueue_header.get("lms_key") == "lms-key-graded"]
    assert callback.path == "/courses/demo/xqueue/1/graded/score_update"
    assert callback.xqueue_body == up.REPLY

    # The LMS logs in with its upstream password; the Django hash is replaced by ours on that login.
    django_hash = stored_hash(server, up.LMS_USER)
    assert django_hash.startswith("pbkdf2_sha256$")
    assert login(server, up.LMS_USER, up.LMS_PASSWORD) == {"return_code": 0, "content": "Logged in"}
    assert stored_hash(server, up.LMS_USER).startswith("scrypt$")
    assert login(server, up.LMS_USER, up.LMS_PASSWORD)["return_code"] == 0  # still the same password
    assert login(server, up.LMS_USER, "wrong-password")["return_code"] == 1
    assert login(server, "old-grader", "whatever-pass")["return_code"] == 1  # inactive upstream, inactive here
    assert stored_hash(server, "old-grader").startswith("pbkdf2_sha256$")  # not rehashed without a login

    # The grader (a pbkdf2_sha1 hash upstream) grades the waiting ones in upstream's arrival order.
    grader = GraderClient(server, up.GRADER_USER, up.GRADER_PASSWORD)
    bodies = {r["id"]: r["xqueue_body"] for r in up.submissions(fake_lms.callback_url)}
    assert grade_all(grader, "python-3", bodies) == [1, 2]  # pulled-never-answered, then waiting
    assert grade_all(grader, "matlab", bodies) == [8]
    lms_keys = {"lms-key-graded", "lms-key-pulled", "lms-key-waiting", "lms-key-matlab"}
    callbacks = fake_lms.wait_for(lambda cbs: {c.xqueue_header.get("lms_key") for c in cbs} >= lms_keys, timeout=30)
    by_key = {c.xqueue_header["lms_key"]: c for c in callbacks}
    assert set(by_key) == lms_keys  # nothing skipped was graded: no stale, file or broken submission
    rows = {json.loads(r["xqueue_header"])["lms_key"]: r for r in fetch(server, "SELECT * FROM submissions")}
    for key, callback in by_key.items():
        name = key.removeprefix("lms-key-")
        assert callback.path == f"/courses/demo/xqueue/1/{name}/score_update"
        assert callback.raw_header == rows[key]["xqueue_header"]  # the LMS's header, verbatim
    # The LMS answered 200 to each: they end delivered (the server records that after the reply).
    deadline = time.monotonic() + 15
    while {k: r["state"] for k, r in rows.items()} != {f"lms-key-{n}": "delivered" for n in up.EXPECTED}:
        assert time.monotonic() < deadline, {k: r["state"] for k, r in rows.items()}
        time.sleep(0.1)
        rows = {json.loads(r["xqueue_header"])["lms_key"]: r for r in fetch(server, "SELECT * FROM submissions")}

    # The LMS keeps submitting with its imported account.
    key, (code, _) = LMSClient(server, up.LMS_USER, up.LMS_PASSWORD).submit("python-3", fake_lms.callback_url("new"))
    assert code == 0
    before = snapshot(server)

    # A second run imports nothing and changes nothing (not even the rehashed password).
    again = import_xqueue(server, upstream_mysql, "--queue", "spare-queue")
    assert again.returncode == 0, again.stderr
    assert "imported 0 account(s), 0 queue(s), 0 submission(s)" in again.stdout, again.stdout
    assert "already here: 8" in again.stdout, again.stdout  # 4 accounts + 4 submissions
    assert snapshot(server) == before
    assert len(fake_lms.callbacks) == 4


def test_dry_run_writes_nothing_and_reports_what_it_would_do(
        xqueue_factory: Callable[..., ServerThread], upstream_mysql: str) -> None:
    server = xqueue_factory()
    before = snapshot(server)
    result = import_xqueue(server, upstream_mysql, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DRY RUN: nothing written. would import 4 account(s), 2 queue(s), "
                                    "4 submission(s)"), result.stdout
    for line in ("account  edx-lms", "queue    python-3", "submission #3 -> python-3: graded, callback to deliver",
                 "submission #1 -> python-3: was with a grader that never answered: graded again"):
        assert line in result.stdout, result.stdout
    assert snapshot(server) == before

    as_json = import_xqueue(server, upstream_mysql, "--dry-run", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["dry_run"] is True
    assert set(report["accounts"]) == up.IMPORTED_ACCOUNTS
    assert {s["upstream_id"]: s["state"] for s in report["submissions"]} == {1: "pending", 2: "pending",
                                                                             3: "answered", 8: "pending"}
    assert snapshot(server) == before


def test_report_says_what_was_skipped_and_why(
        xqueue_factory: Callable[..., ServerThread], upstream_mysql: str) -> None:
    server = xqueue_factory()
    result = import_xqueue(server, upstream_mysql, "--json", "--queue", "bad queue name!")
    assert result.returncode == 0, result.stderr
    skipped = json.loads(result.stdout)["skipped"]
    reasons = {(s["kind"], s["name"]): s["reason"] for s in skipped}
    for username, why in up.SKIPPED_ACCOUNTS.items():
        assert why in reasons[("account", username)], reasons
        assert f"xqueue-admin create-user {username}" in reasons[("account", username)]
    for sid, why in up.SKIPPED_SUBMISSIONS.items():
        [reason] = [r for (kind, name), r in reasons.items() if kind == "submission" and name.startswith(f"#{sid} ")]
        assert why in reason, reason
    assert "answer.py" in reasons[("submission", "#5 (python-3)")]
    assert "graders" in reasons[("group", up.GRADER_USER)]
    assert ("queue", "bad queue name!") in reasons
    assert len(skipped) == 2 + 3 + 1 + 1  # nothing else: the finished (retired) row is not even read
    # Skipped accounts are not created; imported ones keep upstream's hash until their first login.
    hashes = dict(fetch(server, "SELECT username, password_hash FROM accounts"))
    assert "legacy-bcrypt" not in hashes and "no-password" not in hashes
    assert hashes[up.GRADER_USER].startswith("pbkdf2_sha1$")


def test_unreadable_upstream_is_a_clear_error(xqueue_factory: Callable[..., ServerThread], mariadb: Any) -> None:
    server = xqueue_factory()
    wrong = f"mysql://xqueue:not-the-password@127.0.0.1:{mariadb.port}/nothing"
    result = import_xqueue(server, wrong)
    assert result.returncode == 1
    assert "cannot connect to the upstream MySQL database" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    empty = import_xqueue(server, mariadb.create_database("empty_upstream"))
    assert empty.returncode == 1 and "cannot read the upstream MySQL database" in empty.stderr, empty.stderr
    unknown = import_xqueue(server, "oracle://x/y")
    assert unknown.returncode == 1 and "unsupported upstream database URL scheme" in unknown.stderr


def test_two_imports_at_once_import_everything_once(
        xqueue_factory: Callable[..., ServerThread], upstream_mysql: str) -> None:
    server = xqueue_factory()
    env = {**os.environ, "XQUEUE_DATABASE_URL": server.settings.database_url or ""}
    runs = [subprocess.Popen([sys.executable, "-m", "xqueue_server.cli", "import-xqueue", upstream_mysql, "--json"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        reports.append(json.loads(out))
    # Each report tells what that run wrote: together, everything once.
    assert sorted(s["upstream_id"] for r in reports for s in r["submissions"]) == [1, 2, 3, 8]
    assert sorted(a for r in reports for a in r["accounts"]) == sorted(up.IMPORTED_ACCOUNTS)
    headers = [r["xqueue_header"] for r in fetch(server, "SELECT xqueue_header FROM submissions")]
    assert len(headers) == len(set(headers)) == 4
    assert len(fetch(server, "SELECT id FROM callbacks")) == 1  # the graded one's, once
    usernames = [r["username"] for r in fetch(server, "SELECT username FROM accounts")]
    assert len(usernames) == len(set(usernames)) == 3 + 4  # the server's own three, upstream's four
