"""The server as a separate process (``python -m xqueue_server``), for tests of the command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests

from tests.waiting import wait_until_blocking


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "xqueue_server"], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"server exited early: {output[-2000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until_blocking(ready, 90, "the server to become ready", interval=0.2)
    except AssertionError:
        process.kill()
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.stdout.read().decode() if process.stdout else ""
