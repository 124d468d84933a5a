"""Fixtures of the upstream-import tests: a real MariaDB server (Debian's package, installed through
scripts/ensure-system-deps.sh when missing) holding upstream XQueue's schema and data shaped like it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.importing import upstream_data
from tests.importing.mariadb import LocalMariaDB
from xqueue_server.testing import FakeLMS

SCHEMA_MYSQL = Path(__file__).with_name("upstream_schema_mysql.sql")


@pytest.fixture(scope="session")
def mariadb() -> Iterator[LocalMariaDB]:
    server = LocalMariaDB()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream_mysql(mariadb: LocalMariaDB, fake_lms: FakeLMS) -> str:
    """The URL of a fresh upstream database on MariaDB, its callbacks pointing at ``fake_lms``."""
    name = f"xqueue_{uuid.uuid4().hex[:10]}"
    url = mariadb.create_database(name)
    conn = mariadb.connect(name)
    try:
        with conn.cursor() as cur:
            for statement in SCHEMA_MYSQL.read_text().split(";"):
                if statement.strip():
                    cur.execute(statement)
            upstream_data.insert_all(cur, "%s", upstream_data.all_tables(fake_lms.callback_url))
    finally:
        conn.close()
    return url
