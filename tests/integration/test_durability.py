"""The embedded PostgreSQL that a bare ``xqueue-server`` starts keeps PostgreSQL's crash safety; only
the explicit fast switch (XQUEUE_LOCAL_DURABILITY=fast) turns it off."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import asyncpg
import pytest

from tests.integration.processes import start_server, stop
from xqueue_server.config import ConfigError, load_settings
from xqueue_server.local_pg import free_port

SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


async def _show(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return {name: await conn.fetchval(f"SHOW {name}") for name in SETTINGS}
    finally:
        await conn.close()


def _embedded_settings(extra_env: dict[str, str]) -> dict[str, str]:
    state = tempfile.mkdtemp(prefix="xqueue-state-")
    os.chmod(state, 0o755)  # PostgreSQL runs as an unprivileged user when the tests run as root
    port = free_port()
    assert "XQUEUE_DATABASE_URL" not in os.environ
    process = start_server({"XQUEUE_LOCAL_STATE_DIR": state, "XQUEUE_PORT": str(port), **extra_env}, port)
    try:
        return asyncio.run(_show((Path(state) / "database_url").read_text()))
    finally:
        stop(process)


def test_embedded_default_postgres_is_durable() -> None:
    assert _embedded_settings({}) == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def test_explicit_fast_switch_turns_durability_off() -> None:
    shown = _embedded_settings({"XQUEUE_LOCAL_DURABILITY": "fast"})
    assert shown == {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def test_unknown_durability_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="XQUEUE_LOCAL_DURABILITY"):
        load_settings({"XQUEUE_LOCAL_DURABILITY": "sometimes"})
