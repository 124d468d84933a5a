"""Credentials lifecycle across replicas: password changes, deactivation and deletion end access at
once, and API tokens can be listed and revoked (admin API and xqueue-admin), on every replica.

Two server apps share one database, like two replicas behind a Service. Every check happens right
after the change, with no sleep: an in-process cache that outlived the change would fail it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import requests

from xqueue_server.testing import ServerThread


def cli(server: ServerThread, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XQUEUE_DATABASE_URL": server.settings.database_url or ""}
    return subprocess.run([sys.executable, "-m", "xqueue_server.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def admin(server: ServerThread) -> requests.Session:
    session = requests.Session()
    session.auth = (server.admin.username, server.admin.password)
    return session


def queue_length_status(server: ServerThread, **kwargs: Any) -> int:
    """200 when the credentials are accepted; upstream's 302 to the login page when not."""
    response = requests.get(f"{server.url}/xqueue/get_queuelen/", params={"queue_name": "test-pull"},
                            allow_redirects=False, timeout=10, **kwargs)
    if response.status_code == 200:
        assert response.json()["return_code"] == 0, response.text
    return response.status_code


def logged_in(server: ServerThread, username: str, password: str) -> requests.Session:
    session = requests.Session()
    reply = session.post(f"{server.url}/xqueue/login/", data={"username": username, "password": password},
                         timeout=10).json()
    assert reply == {"return_code": 0, "content": "Logged in"}
    return session


@pytest.fixture
def replicas(xqueue_factory: Callable[..., ServerThread]) -> tuple[ServerThread, ServerThread]:
    first = xqueue_factory()
    return first, xqueue_factory(database_url=first.settings.database_url)


def make_account(server: ServerThread, username: str, password: str) -> None:
    reply = admin(server).put(f"{server.url}/api/v1/users/{username}", json={"password": password}, timeout=10)
    assert reply.status_code in (200, 201), reply.text


def test_password_change_ends_sessions_and_basic_auth_on_every_replica(
        replicas: tuple[ServerThread, ServerThread]) -> None:
    a, b = replicas
    make_account(a, "rotating", "first-password")
    session = logged_in(b, "rotating", "first-password")
    # Both used once on replica B, so anything B remembers about them is warm.
    assert queue_length_status(b, cookies=session.cookies) == 200
    assert queue_length_status(b, auth=("rotating", "first-password")) == 200
    make_account(a, "rotating", "second-password")  # changed through replica A
    assert queue_length_status(b, cookies=session.cookies) == 302
    assert queue_length_status(b, auth=("rotating", "first-password")) == 302
    assert queue_length_status(b, auth=("rotating", "second-password")) == 200
    # The same through xqueue-admin set-password, straight on the database.
    session = logged_in(b, "rotating", "second-password")
    assert queue_length_status(b, cookies=session.cookies) == 200
    reset = cli(a, "set-password", "rotating", "--password-stdin", stdin="third-password\n")
    assert reset.returncode == 0, reset.stderr
    assert queue_length_status(b, cookies=session.cookies) == 302
    assert queue_length_status(b, auth=("rotating", "second-password")) == 302
    assert queue_length_status(b, auth=("rotating", "third-password")) == 200


def test_reprovisioning_with_the_same_password_keeps_sessions(replicas: tuple[ServerThread, ServerThread]) -> None:
    """The operator re-applies its grader accounts hourly and the Helm admin Job at every upgrade:
    an unchanged password is not a password change, so graders are not logged out."""
    a, b = replicas
    make_account(a, "steady", "steady-password")
    session = logged_in(b, "steady", "steady-password")
    make_account(a, "steady", "steady-password")
    assert cli(a, "create-user", "steady", "--password-stdin", stdin="steady-password\n").returncode == 0
    assert queue_length_status(b, cookies=session.cookies) == 200


@pytest.mark.parametrize("how", ["api-delete", "cli-delete", "cli-deactivate"])
def test_deleted_or_deactivated_account_is_refused_at_once_on_every_replica(
        replicas: tuple[ServerThread, ServerThread], how: str) -> None:
    a, b = replicas
    make_account(a, "leaving", "leaving-password")
    session = logged_in(b, "leaving", "leaving-password")
    token = admin(a).post(f"{a.url}/api/v1/tokens", json={"username": "leaving"}, timeout=10).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    for credentials in ({"cookies": session.cookies}, {"auth": ("leaving", "leaving-password")},
                        {"headers": bearer}):
        assert queue_length_status(b, **credentials) == 200
    if how == "api-delete":
        assert admin(a).delete(f"{a.url}/api/v1/users/leaving", timeout=10).json()["deleted"] is True
    else:
        done = cli(a, "delete-user" if how == "cli-delete" else "deactivate-user", "leaving")
        assert done.returncode == 0, done.stderr
    for credentials in ({"cookies": session.cookies}, {"auth": ("leaving", "leaving-password")},
                        {"headers": bearer}):
        assert queue_length_status(b, **credentials) == 302, credentials
    if how == "cli-deactivate":
        assert cli(a, "activate-user", "leaving").returncode == 0
        assert queue_length_status(b, headers=bearer) == 200
        # Deactivation ended the session for good; the password works again for a new one.
        assert queue_length_status(b, cookies=session.cookies) == 302
        assert queue_length_status(b, cookies=logged_in(b, "leaving", "leaving-password").cookies) == 200


def test_tokens_are_listed_without_secrets_and_revoked_at_once_on_every_replica(
        replicas: tuple[ServerThread, ServerThread]) -> None:
    a, b = replicas
    api = admin(a)
    created = api.post(f"{a.url}/api/v1/tokens", json={"username": "grader", "pull_queues": ["test-pull"],
                                                       "ttl_seconds": 3600}, timeout=10)
    assert created.status_code == 201
    secret, token_id = created.json()["token"], created.json()["id"]
    bearer = {"Authorization": f"Bearer {secret}"}
    assert queue_length_status(b, headers=bearer) == 200
    listed = api.get(f"{a.url}/api/v1/tokens", params={"username": "grader"}, timeout=10)
    assert listed.status_code == 200 and secret not in listed.text
    (entry,) = [t for t in listed.json()["tokens"] if t["id"] == token_id]
    assert entry["username"] == "grader" and entry["pull_queues"] == ["test-pull"]
    assert entry["submit_queues"] is None and entry["expired"] is False
    assert entry["created_at"] and entry["expires_at"] and entry["last_used_at"]  # used on B just now
    assert set(entry) == {"id", "username", "pull_queues", "submit_queues", "created_at", "expires_at",
                          "last_used_at", "expired"}
    assert api.get(f"{a.url}/api/v1/tokens", params={"username": "lms"}, timeout=10).json() == {"tokens": []}
    as_lms = requests.get(f"{a.url}/api/v1/tokens", auth=(a.lms.username, a.lms.password), timeout=10)
    assert as_lms.status_code == 403

    revoked = api.delete(f"{a.url}/api/v1/tokens/{token_id}", timeout=10)
    assert revoked.json() == {"id": token_id, "revoked": True}
    assert queue_length_status(b, headers=bearer) == 302
    assert api.delete(f"{a.url}/api/v1/tokens/{token_id}", timeout=10).json()["revoked"] is False
    assert api.delete(f"{a.url}/api/v1/tokens/abc", timeout=10).status_code == 400

    # The same through xqueue-admin.
    made = cli(a, "create-token", "grader", "--pull-queues", "test-pull")
    cli_secret = made.stdout.strip()
    cli_id = int(made.stderr.split("token id ")[1].split()[0])
    assert queue_length_status(b, headers={"Authorization": f"Bearer {cli_secret}"}) == 200
    listing = cli(a, "list-tokens", "--username", "grader")
    assert f"#{cli_id} user=grader pull=test-pull submit=all" in listing.stdout
    assert cli_secret not in listing.stdout + listing.stderr
    as_json = json.loads(cli(a, "list-tokens", "--json").stdout)
    assert cli_id in [t["id"] for t in as_json] and cli_secret not in json.dumps(as_json)
    done = cli(a, "revoke-token", str(cli_id))
    assert done.returncode == 0 and f"revoked 1 token(s): #{cli_id}" in done.stdout
    assert queue_length_status(b, headers={"Authorization": f"Bearer {cli_secret}"}) == 302
    again = cli(a, "revoke-token", str(cli_id))
    assert again.returncode == 1 and f"no token #{cli_id}" in again.stderr
    # Every token of one account at once.
    several = [cli(a, "create-token", "lms").stdout.strip() for _ in range(2)]
    assert "revoked 2 token(s)" in cli(a, "revoke-token", "--user", "lms").stdout
    for other in several:
        assert queue_length_status(b, headers={"Authorization": f"Bearer {other}"}) == 302
