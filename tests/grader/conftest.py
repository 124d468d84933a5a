"""Fixtures of the grader tests: a real sandbox (zygote), the gradelib engine on the example course,
and a real HTTP server speaking classic XQueue.  Constants and plain helpers: ``helpers.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from xqueue_grader.engine import GradingEngine
from xqueue_grader.sandbox import SandboxPool

from .fake_xqueue import FakeXQueue
from .helpers import ABUSE_COURSE, EXAMPLES, TEST_LIMITS, sandbox_settings

# ABUSE_COURSE and EXAMPLES are also read from this module by the in-pod adapter
# (tests/node/assets/xqgrader_inpod.py), which seals both courses as a pod would.
__all__ = ["ABUSE_COURSE", "EXAMPLES"]


@pytest.fixture(scope="session")
async def sandbox_pool() -> AsyncIterator[SandboxPool]:
    pool = SandboxPool(sandbox_settings())
    await pool.start()
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def engine(sandbox_pool: SandboxPool) -> GradingEngine:
    return GradingEngine(sandbox_pool, EXAMPLES, TEST_LIMITS)


@pytest.fixture
async def fake_xqueue() -> AsyncIterator[FakeXQueue]:
    """A classic XQueue server on 127.0.0.1 (an ephemeral port)."""
    server = await FakeXQueue().start()
    yield server
    await server.stop()


@pytest.fixture
def fake(fake_xqueue: FakeXQueue) -> FakeXQueue:
    """The same server under the short name the client and daemon tests use."""
    return fake_xqueue
