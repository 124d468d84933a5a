"""Drain with parked long-polls: when the daemon begins to drain (SIGTERM), it closes its pending
``get_submission?wait=S`` requests at once, so the server sees the graders leave (and hands the next
submission to a grader that is still there), and the daemon exits without waiting out the poll."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from xqueue_grader.daemon import GraderDaemon
from xqueue_grader.launch import grader_env, start_subprocess
from xqueue_grader.sandbox import SandboxPool

from .fake_xqueue import FakeXQueue
from .helpers import EXAMPLES, SESSION_UID, daemon_config, wait_exit, wait_until

LONG_POLL = 30  # seconds the server may hold a poll; every wait here is far shorter


@dataclass
class ParkingXQueue(FakeXQueue):
    """Holds every long-poll until its client closes the connection, and notes when that happened."""

    supports_wait: bool = True
    parked: int = 0
    closed_at: list[float] = field(default_factory=list)

    async def _get_submission(self, request: web.Request) -> web.Response:
        if "wait" not in request.query or not self._authenticated(request):
            return await super()._get_submission(request)
        self._record(request)
        self.parked += 1
        deadline = time.monotonic() + LONG_POLL
        try:
            while time.monotonic() < deadline:
                transport = request.transport
                if transport is None or transport.is_closing():
                    self.closed_at.append(time.monotonic())
                    break
                await asyncio.sleep(0.01)
        finally:
            self.parked -= 1
        return self._reply(False, f"Queue '{self.queue}' is empty")


@pytest.fixture
async def parking() -> AsyncIterator[ParkingXQueue]:
    server = await ParkingXQueue().start()
    yield server
    await server.stop()


async def test_drain_closes_parked_long_polls_at_once(parking: ParkingXQueue, sandbox_pool: SandboxPool) -> None:
    daemon = GraderDaemon(daemon_config(parking, long_poll_seconds=LONG_POLL, slots=2), pool=sandbox_pool)
    await daemon.start()
    try:
        await wait_until(lambda: parking.parked == 2, 10, "both slots to park a long-poll")
        stopped = time.monotonic()
        daemon.request_stop()
        await wait_until(lambda: len(parking.closed_at) == 2, 5, "the server to see both polls closed")
        assert max(parking.closed_at) - stopped < 0.5
    finally:
        status = await daemon.shutdown()
    assert status == 0
    assert time.monotonic() - stopped < 2.0  # not the 30 s the polls could have lasted


def start_long_polling_grader(fake: FakeXQueue, tmp_path: Path) -> subprocess.Popen[bytes]:
    config_file = tmp_path / "grader.yaml"
    config_file.write_text(yaml.safe_dump({"http_host": "127.0.0.1", "sandbox_uid": SESSION_UID,
                                           "long_poll_seconds": LONG_POLL}))
    env = grader_env(server_url=fake.url, queue=fake.queue, username=fake.username, password=fake.password,
                     grader_root=EXAMPLES, slots=1, config_file=str(config_file))
    return start_subprocess(env, stderr=open(tmp_path / "grader.log", "wb"))


async def test_sigterm_with_a_parked_long_poll_exits_fast(parking: ParkingXQueue, tmp_path: Path) -> None:
    proc = start_long_polling_grader(parking, tmp_path)
    try:
        await wait_until(lambda: parking.parked == 1, 20, "the grader to park a long-poll")
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: len(parking.closed_at) == 1, 5, "the server to see the poll closed")
        closed = parking.closed_at[0] - stopped
        assert await wait_exit(proc, 10) == 0
        exited = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"\nSIGTERM -> long-poll closed after {closed:.3f} s, process exited after {exited:.2f} s")
    assert closed < 0.5
    assert exited < 3.0

