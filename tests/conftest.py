"""Shared fixtures: a real PostgreSQL per test run, real XQueue servers and a fake LMS on 127.0.0.1.

- ``postgres``: one throwaway cluster (initdb/pg_ctl in a temp dir) for the whole run.
- ``xqueue``: a server with its own database, shared by the tests of a module; tests isolate
  themselves with their own queue names (``queue_name`` fixture).
- ``xqueue_factory``: a dedicated server with custom settings (short leases, few pulls, S3, ...).
- ``fake_lms``: an aiohttp server recording callbacks.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import FakeLMS, ServerThread, create_database


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    data_dir = tempfile.mkdtemp(prefix="xqueue-test-pg-")
    pg = LocalPostgres(data_dir, durable=False)  # tests trade crash safety for speed, explicitly
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def xqueue_factory(postgres: LocalPostgres) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**overrides: Any) -> ServerThread:
        database_url = overrides.pop("database_url", None) or create_database(postgres.url)
        server = ServerThread.start(database_url, **overrides)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture(scope="module")
def xqueue(postgres: LocalPostgres) -> Iterator[ServerThread]:
    server = ServerThread.start(create_database(postgres.url))
    yield server
    server.stop()


@pytest.fixture
def fake_lms() -> Iterator[FakeLMS]:
    lms = FakeLMS()
    yield lms
    lms.stop()


def admin_session(server: ServerThread) -> requests.Session:
    session = requests.Session()
    session.auth = (server.admin.username, server.admin.password)
    return session


@pytest.fixture
def queue_name(xqueue: ServerThread) -> str:
    """A fresh queue on the module's server, so tests never see each other's submissions."""
    name = f"q-{uuid.uuid4().hex[:10]}"
    response = admin_session(xqueue).put(f"{xqueue.url}/api/v1/queues/{name}", timeout=10)
    assert response.status_code == 201, response.text
    return name
