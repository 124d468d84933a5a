"""Fixtures of the status page tests: a real headless Chromium (Debian's ``chromium`` package).

A missing Chromium is installed with scripts/ensure-system-deps.sh (as ``make setup`` does); if that
is impossible the tests fail: a browser test that cannot run must not pass as skipped.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.status.browser import Browser, find_chromium
from tests.status.scenario import SERVER_SETTINGS, Scenario, build
from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import FakeLMS, ServerThread, create_database

ROOT = Path(__file__).resolve().parents[2]


def chromium_binary() -> str:
    found = find_chromium()
    if found is None:
        result = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-system-deps.sh")], capture_output=True,
                                text=True, timeout=900, check=False)
        found = find_chromium()
        if found is None:
            pytest.fail("chromium is missing and scripts/ensure-system-deps.sh could not install it:\n"
                        + result.stdout[-2000:] + result.stderr[-2000:])
    return found


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = await Browser.launch(chromium_binary())
    try:
        yield chromium
    finally:
        await chromium.close()


@pytest.fixture(scope="module")
def scenario(postgres: LocalPostgres) -> Iterator[Scenario]:
    """A server of its own with the known state of ``scenario.build`` (shared by a module's tests)."""
    good_lms, bad_lms = FakeLMS(), FakeLMS()
    bad_lms.status = 500
    server = ServerThread.start(create_database(postgres.url), **SERVER_SETTINGS)
    try:
        yield build(server, good_lms, bad_lms)
    finally:
        server.stop()
        good_lms.stop()
        bad_lms.stop()
