"""The admin JSON API, per-queue permissions, scoped API tokens, and the admin CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from tests.integration.clients import GraderClient, LMSClient
from tests.tcp_proxy import TcpProxy
from xqueue_server.db import migration_files
from xqueue_server.testing import FakeLMS, ServerThread

LATEST_SCHEMA = migration_files()[-1][0]


def admin(server: ServerThread) -> requests.Session:
    session = requests.Session()
    session.auth = (server.admin.username, server.admin.password)
    return session


def test_admin_api_requires_an_admin(xqueue: ServerThread) -> None:
    assert requests.get(f"{xqueue.url}/api/v1/queues", timeout=10).status_code == 401
    as_lms = requests.get(f"{xqueue.url}/api/v1/queues", auth=("lms", "lms-password"), timeout=10)
    assert as_lms.status_code == 403
    assert as_lms.json() == {"error": "admin account required"}


def test_queue_provisioning_is_idempotent_and_reports_lengths(xqueue: ServerThread, fake_lms: FakeLMS) -> None:
    api = admin(xqueue)
    first = api.put(f"{xqueue.url}/api/v1/queues/course-a", timeout=10)
    assert first.status_code == 201 and first.json() == {"name": "course-a", "created": True}
    again = api.put(f"{xqueue.url}/api/v1/queues/course-a", timeout=10)
    assert again.status_code == 200 and again.json()["created"] is False
    LMSClient(xqueue).submit("course-a", fake_lms.callback_url("a1"))
    LMSClient(xqueue).submit("course-a", fake_lms.callback_url("a2"))
    GraderClient(xqueue).pull("course-a")
    length = api.get(f"{xqueue.url}/api/v1/queues/course-a/length", timeout=10).json()
    assert length["queue"] == "course-a" and length["queued"] == 1 and length["in_flight"] == 1
    assert length["oldest_queued_age_seconds"] >= 0
    assert length["in_flight_by_grader"] == {"127.0.0.1": 1}
    listed = {q["name"]: q for q in api.get(f"{xqueue.url}/api/v1/queues", timeout=10).json()["queues"]}
    assert listed["course-a"]["queued"] == 1
    assert api.get(f"{xqueue.url}/api/v1/queues/nope/length", timeout=10).status_code == 404
    bad = api.put(f"{xqueue.url}/api/v1/queues/bad name!", timeout=10)
    assert bad.status_code == 400 and "queue names" in bad.json()["error"]
    deleted = api.delete(f"{xqueue.url}/api/v1/queues/course-a", timeout=10).json()
    assert deleted == {"name": "course-a", "deleted": True}


def test_grader_account_limited_to_its_queue(xqueue: ServerThread, fake_lms: FakeLMS) -> None:
    api = admin(xqueue)
    for name in ("course-x", "course-y"):
        api.put(f"{xqueue.url}/api/v1/queues/{name}", timeout=10)
    created = api.put(f"{xqueue.url}/api/v1/users/grader-x", json={
        "password": "secret-password-x", "pull_queues": ["course-x"], "submit_queues": []}, timeout=10)
    assert created.status_code == 201, created.text
    lms = LMSClient(xqueue)
    lms.submit("course-x", fake_lms.callback_url("x"))
    lms.submit("course-y", fake_lms.callback_url("y"))
    grader = GraderClient(xqueue, "grader-x", "secret-password-x")
    assert grader.pull("course-x") is not None
    # A queue it may not pull answers exactly like one that does not exist.
    denied = grader.get_submission("course-y")
    assert denied == {"return_code": 1, "content": "Queue 'course-y' not found"}
    # It may not submit anywhere (refused before its body is read), and only learns about the queues it may use.
    code, content = LMSClient(xqueue, "grader-x", "secret-password-x").submit("course-x", fake_lms.callback_url("z"))[1]
    assert (code, content) == (1, "This account may not submit to any queue")
    assert grader.queue_length("nope")["content"] == "Valid queue names are: course-x"
    # The operator's queue-length endpoint is open to the course's grader account.
    own = requests.get(f"{xqueue.url}/api/v1/queues/course-x/length", auth=("grader-x", "secret-password-x"),
                       timeout=10)
    assert own.status_code == 200
    other = requests.get(f"{xqueue.url}/api/v1/queues/course-y/length", auth=("grader-x", "secret-password-x"),
                         timeout=10)
    assert (other.status_code, other.json()) == (404, {"error": "Queue 'course-y' not found"})


def test_scoped_bearer_token(xqueue: ServerThread, fake_lms: FakeLMS) -> None:
    api = admin(xqueue)
    api.put(f"{xqueue.url}/api/v1/queues/course-t", timeout=10)
    token = api.post(f"{xqueue.url}/api/v1/tokens", json={"username": "grader", "pull_queues": ["course-t"],
                                                           "submit_queues": []}, timeout=10)
    assert token.status_code == 201
    secret = token.json()["token"]
    LMSClient(xqueue).submit("course-t", fake_lms.callback_url("t"))
    headers = {"Authorization": f"Bearer {secret}"}
    pulled = requests.get(f"{xqueue.url}/xqueue/get_submission/", params={"queue_name": "course-t"},
                          headers=headers, allow_redirects=False, timeout=10).json()
    assert pulled["return_code"] == 0
    denied = requests.get(f"{xqueue.url}/xqueue/get_submission/", params={"queue_name": "test-pull"},
                          headers=headers, allow_redirects=False, timeout=10).json()
    assert denied == {"return_code": 1, "content": "Queue 'test-pull' not found"}
    wrong = requests.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": "course-t"},
                         headers={"Authorization": "Bearer nope"}, allow_redirects=False, timeout=10)
    assert wrong.status_code == 302


def _restricted_grader(server: ServerThread, pull: list[str], submit: list[str] | None = None) -> tuple[str, str]:
    username, password = f"g-{uuid.uuid4().hex[:8]}", "restricted-password"
    created = admin(server).put(f"{server.url}/api/v1/users/{username}", json={
        "password": password, "pull_queues": pull, "submit_queues": submit or []}, timeout=10)
    assert created.status_code == 201, created.text
    return username, password


def _fresh_queues(server: ServerThread, count: int) -> list[str]:
    names = [f"authz-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    for name in names:
        assert admin(server).put(f"{server.url}/api/v1/queues/{name}", timeout=10).status_code == 201
    return names


def test_put_result_needs_the_right_to_pull_the_submissions_queue(xqueue: ServerThread, fake_lms: FakeLMS) -> None:
    """Holding a valid id and key is not enough: a submission of a queue the caller may not pull is
    answered exactly like a missing one, single and bulk, for accounts and for scoped tokens."""
    own, foreign = _fresh_queues(xqueue, 2)
    lms = LMSClient(xqueue)
    lms.submit(foreign, fake_lms.callback_url("foreign"))
    pulled = GraderClient(xqueue).pull(foreign)  # the unrestricted grader holds the lease and key
    assert pulled is not None
    header = pulled["xqueue_header"]
    missing_header = json.dumps({"submission_id": 2**62, "submission_key": json.loads(header)["submission_key"]})
    username, password = _restricted_grader(xqueue, [own])
    token = admin(xqueue).post(f"{xqueue.url}/api/v1/tokens", json={"username": "grader", "pull_queues": [own]},
                               timeout=10).json()["token"]
    as_account = GraderClient(xqueue, username, password)
    token_session = requests.Session()
    token_session.headers["Authorization"] = f"Bearer {token}"
    for session in (as_account.session, token_session):
        replies = []
        for h in (header, missing_header):
            single = session.post(f"{xqueue.url}/xqueue/put_result/", data={"xqueue_header": h, "xqueue_body": "{}"},
                                  allow_redirects=False, timeout=10)
            bulk = session.post(f"{xqueue.url}/xqueue/put_result/", data={"results": json.dumps(
                [{"xqueue_header": h, "xqueue_body": "{}"}])}, allow_redirects=False, timeout=10)
            assert single.status_code == bulk.status_code == 200
            replies.append((single.json(), bulk.json()["content"][0]))
        foreign_reply, missing_reply = replies
        assert foreign_reply == missing_reply == ({"return_code": 1, "content": "Submission does not exist"},) * 2
    # Nothing was recorded: the grader that really pulled it still answers it, and the LMS gets its grade.
    assert GraderClient(xqueue).put_result(header, {"correct": True, "score": 1, "msg": "ok"})["return_code"] == 0
    assert fake_lms.wait_for(lambda cbs: any(c.path.endswith("/foreign/score_update") for c in cbs))


def test_a_forbidden_queue_answers_like_an_unknown_one(xqueue: ServerThread, fake_lms: FakeLMS) -> None:
    own, forbidden = _fresh_queues(xqueue, 2)
    unknown = f"authz-{uuid.uuid4().hex[:8]}"
    username, password = _restricted_grader(xqueue, [own], submit=[own])
    grader = GraderClient(xqueue, username, password)
    lms_account = LMSClient(xqueue, username, password)
    for name in (forbidden, unknown):
        assert grader.get_submission(name) == {"return_code": 1, "content": f"Queue '{name}' not found"}
        assert grader.queue_length(name) == {"return_code": 1, "content": f"Valid queue names are: {own}"}
        assert lms_account.submit(name, fake_lms.callback_url("n"))[1] == (1, f"Queue '{name}' not found")
        length = requests.get(f"{xqueue.url}/api/v1/queues/{name}/length", auth=(username, password), timeout=10)
        assert (length.status_code, length.json()) == (404, {"error": f"Queue '{name}' not found"})


def test_admin_api_rejects_bad_bodies(xqueue: ServerThread) -> None:
    api = admin(xqueue)
    url = f"{xqueue.url}/api/v1/users/someone"
    for body, expected in (
        ("not json", "body must be a JSON object"),
        ("[1]", "body must be a JSON object"),
        (json.dumps({"password": "short"}), "'password' must be a string of 8 to 1024 characters"),
        (json.dumps({"password": "long-enough", "is_admin": "yes"}), "'is_admin' must be a boolean"),
        (json.dumps({"password": "long-enough", "pull_queues": "q"}), "'pull_queues' must be a list"),
    ):
        response = api.put(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == 400
        assert response.json()["error"].startswith(expected)
    missing = api.post(f"{xqueue.url}/api/v1/tokens", json={"username": "nobody"}, timeout=10)
    assert missing.status_code == 404


def run_admin_cli(database_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XQUEUE_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "xqueue_server.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_admin_cli_manages_users_and_queues(xqueue: ServerThread, tmp_path: Path) -> None:
    url = xqueue.settings.database_url or ""
    created = run_admin_cli(url, "create-user", "cli-user", "--password-stdin", stdin="cli-password\n")
    assert created.returncode == 0 and "created account cli-user" in created.stdout
    assert GraderClient(xqueue, "cli-user", "cli-password").login()["content"] == "Logged in"
    reset = run_admin_cli(url, "set-password", "cli-user", "--password-stdin", stdin="new-password\n")
    assert reset.returncode == 0
    assert GraderClient(xqueue, "cli-user", "new-password").login()["content"] == "Logged in"
    users = tmp_path / "users.yaml"
    users.write_text("imported-a: password-a\nimported-b: password-b\n")
    imported = run_admin_cli(url, "import-users", str(users))
    assert "imported 2 account(s)" in imported.stdout
    assert GraderClient(xqueue, "imported-b", "password-b").login()["content"] == "Logged in"
    assert run_admin_cli(url, "create-queue", "cli-queue").returncode == 0
    assert "cli-queue" in run_admin_cli(url, "list-queues").stdout
    assert run_admin_cli(url, "delete-queue", "cli-queue").returncode == 0
    assert "cli-queue" not in run_admin_cli(url, "list-queues").stdout
    assert "cli-user" in run_admin_cli(url, "list-users").stdout
    token = run_admin_cli(url, "create-token", "cli-user").stdout.strip()
    reply = requests.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": "test-pull"},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert reply["return_code"] == 0
    assert run_admin_cli(url, "delete-user", "cli-user").returncode == 0
    assert run_admin_cli(url, "set-password", "cli-user", "--password-stdin", stdin="whatever1\n").returncode == 1
    short = run_admin_cli(url, "create-user", "x", "--password-stdin", stdin="short\n")
    assert short.returncode != 0 and "at least 8" in short.stderr


def test_passwords_are_stored_hashed(xqueue: ServerThread) -> None:
    async def stored_hash() -> Any:
        import asyncpg

        conn = await asyncpg.connect(xqueue.settings.database_url)
        try:
            return await conn.fetchval("SELECT password_hash FROM accounts WHERE username = 'lms'")
        finally:
            await conn.close()

    value = xqueue.run(stored_hash())
    assert value.startswith("scrypt$") and "lms-password" not in value


def test_migrate_command_is_idempotent(xqueue: ServerThread) -> None:
    result = run_admin_cli(xqueue.settings.database_url or "", "migrate")
    assert result.returncode == 0
    assert "nothing (up to date)" in result.stdout
    assert f"schema version: {LATEST_SCHEMA}" in result.stdout


# The test cluster trusts local connections, so any password in the URL works; it must never be printed.
SECRET_MARKER = "pw-that-must-not-be-logged"


def test_migrate_waits_for_a_database_that_comes_up_late(xqueue: ServerThread) -> None:
    """``--wait-seconds``: the chart's migration step may start before PostgreSQL listens."""
    real = urlsplit(xqueue.settings.database_url or "")
    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        late_port = probe.getsockname()[1]
    late_url = real._replace(netloc=f"{real.username}:{SECRET_MARKER}@127.0.0.1:{late_port}").geturl()
    cli = subprocess.Popen([sys.executable, "-m", "xqueue_server.cli", "--wait-seconds", "30", "migrate"],
                           env={**os.environ, "XQUEUE_DATABASE_URL": late_url}, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(2.5)
    proxy = TcpProxy(real.hostname or "127.0.0.1", real.port or 5432, listen_port=late_port)
    try:
        out, err = cli.communicate(timeout=60)
    finally:
        proxy.close()
    assert cli.returncode == 0, err
    assert "database not reachable yet" in err and f"schema version: {LATEST_SCHEMA}" in out
    assert SECRET_MARKER not in err


def test_admin_cli_reports_an_unreachable_database_in_one_line(xqueue: ServerThread) -> None:
    real = urlsplit(xqueue.settings.database_url or "")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = real._replace(netloc=f"{real.username}:{SECRET_MARKER}@127.0.0.1:{port}").geturl()
    started = time.monotonic()
    result = run_admin_cli(url, "--wait-seconds", "2", "migrate")
    assert result.returncode == 1 and time.monotonic() - started < 30
    assert "database error: ConnectionRefusedError" in result.stderr and "Traceback" not in result.stderr
    assert SECRET_MARKER not in result.stderr

