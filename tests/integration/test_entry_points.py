"""The ``xqueue-server`` command as users run it: with a database URL, and with the embedded default
(its own throwaway PostgreSQL under the state folder)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import requests

from tests.integration.processes import start_server, stop
from xqueue_server.local_pg import LocalPostgres, free_port
from xqueue_server.testing import create_database


def test_server_command_with_database_url_seeds_queues_and_users(postgres: LocalPostgres, tmp_path: Path) -> None:
    port = free_port()
    users = tmp_path / "users.yaml"
    users.write_text("course-lms: a-long-password\n")
    process = start_server({"XQUEUE_DATABASE_URL": create_database(postgres.url), "XQUEUE_PORT": str(port),
                            "XQUEUE_QUEUES": "course-1,course-2", "XQUEUE_USERS_FILE": str(users),
                            "XQUEUE_STORAGE_DIR": str(tmp_path / "files")}, port)
    try:
        session = requests.Session()
        login = session.post(f"http://127.0.0.1:{port}/xqueue/login/",
                             data={"username": "course-lms", "password": "a-long-password"}, timeout=10)
        assert login.json() == {"return_code": 0, "content": "Logged in"}
        reply = session.get(f"http://127.0.0.1:{port}/xqueue/get_queuelen/", params={"queue_name": "course-2"},
                            timeout=10)
        assert reply.json() == {"return_code": 0, "content": 0}
    finally:
        output = stop(process)
    assert process.returncode == 0
    assert "a-long-password" not in output  # secrets never logged


def test_server_command_without_database_url_runs_its_own_postgres() -> None:
    state = tempfile.mkdtemp(prefix="xqueue-state-")
    os.chmod(state, 0o755)  # PostgreSQL runs as an unprivileged user when the tests run as root
    port = free_port()
    env = {"XQUEUE_LOCAL_STATE_DIR": state, "XQUEUE_PORT": str(port), "XQUEUE_QUEUES": "demo"}
    assert "XQUEUE_DATABASE_URL" not in os.environ
    process = start_server(env, port)
    try:
        assert requests.get(f"http://127.0.0.1:{port}/xqueue/status/", timeout=10).json()["content"] == "OK"
        assert (Path(state) / "postgres" / "pgdata" / "PG_VERSION").exists()
        assert (Path(state) / "database_url").read_text().startswith("postgresql://")
    finally:
        stop(process)
    assert process.returncode == 0
    # The local cluster was stopped with the server.
    assert not (Path(state) / "postgres" / "pgdata" / "postmaster.pid").exists()
