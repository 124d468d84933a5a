"""Shared constants and plain helpers of the grader tests (fixtures live in conftest.py).

Student code runs as a dedicated uid when the tests run as root; the uid differs per test session
so that RLIMIT_NPROC (counted per uid, machine-wide) never couples concurrent test runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Re-exported: the grader tests import every helper from here.
from tests.waiting import wait_until as wait_until
from tests.waiting import wait_until_blocking as wait_until_blocking
from xqueue_grader.config import GraderConfig, config_from_sources
from xqueue_grader.engine import GradingEngine
from xqueue_grader.results import GradeResult
from xqueue_grader.sandbox import Limits, SandboxSettings

if TYPE_CHECKING:
    from .fake_xqueue import FakeXQueue

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = str(REPO / "examples" / "course")
ABUSE_COURSE = str(Path(__file__).resolve().parent / "abuse_course")
# A credential in this process's environment: no student run may ever see it.
SECRET_ENV_VALUE = "xqgrader-test-secret-5e1d"
os.environ.setdefault("XQGRADER_TEST_SECRET", SECRET_ENV_VALUE)
SESSION_UID = 61000 + os.getpid() % 3000

# Small limits keep the abuse suite fast; the defaults are tested separately.
TEST_LIMITS = Limits(cpu_seconds=2, wall_seconds=3, memory_mb=256, processes=32, file_size_kb=256,
                     output_kb=64, open_files=64, disk_kb=2048)

SQUARE = "square/grade_square.py"


def lms_body(grader: str | None, code: str, **payload: Any) -> str:
    """An xqueue_body as the LMS builds it (grader_payload and student_info are JSON strings)."""
    grader_payload: dict[str, Any] = dict(payload)
    if grader is not None:
        grader_payload["grader"] = grader
    return json.dumps({
        "grader_payload": json.dumps(grader_payload),
        "student_info": json.dumps({"anonymous_student_id": "student-1", "submission_time": "20260101120000",
                                    "random_seed": 1}),
        "student_response": code,
    })


def sandbox_settings(**overrides: Any) -> SandboxSettings:
    settings: dict[str, Any] = {"hidden_paths": [EXAMPLES, ABUSE_COURSE], "sandbox_uid": SESSION_UID}
    settings.update(overrides)
    return SandboxSettings(**settings)


async def grade(engine: GradingEngine, grader: str | None, code: str, **payload: Any) -> GradeResult:
    return await engine.grade_body(lms_body(grader, code, **payload))


def daemon_config(fake: FakeXQueue, **overrides: Any) -> GraderConfig:
    """An in-process daemon's configuration against ``fake`` for the example course: quick polling,
    small limits."""
    data: dict[str, Any] = {
        "queue": fake.queue, "server_url": fake.url, "username": fake.username, "password": fake.password,
        "grader_root": EXAMPLES, "slots": 2, "http_host": "127.0.0.1", "http_port": 0,
        "long_poll_seconds": 0, "poll_min_seconds": 0.1, "poll_max_seconds": 0.4, "drain_seconds": 10,
        "sandbox_uid": SESSION_UID,
        "limits": {"cpu_seconds": 2, "wall_seconds": 4},
    }
    data.update(overrides)
    return config_from_sources({}, data)


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "HOME": "/tmp", "PATH": os.environ.get("PATH", "")}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- waiting: the shared helpers (tests/waiting.py), re-exported for the grader tests ------

async def wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> int:
    """A process's exit status, once it has exited (bounded)."""
    await wait_until(lambda: proc.poll() is not None, seconds, "the process to exit")
    return int(proc.returncode)
