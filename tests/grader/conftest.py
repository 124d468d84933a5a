"""Fixtures for the grader tests: a real sandbox (zygote) and the gradelib engine on the example course.

Student code runs as a dedicated uid when the tests run as root; the uid differs per test session
so that RLIMIT_NPROC (counted per uid, machine-wide) never couples concurrent test runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from xqueue_grader.engine import GradingEngine
from xqueue_grader.results import GradeResult
from xqueue_grader.sandbox import Limits, SandboxPool, SandboxSettings

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


@pytest.fixture(scope="session")
async def sandbox_pool() -> AsyncIterator[SandboxPool]:
    pool = SandboxPool(sandbox_settings())
    await pool.start()
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def engine(sandbox_pool: SandboxPool) -> GradingEngine:
    return GradingEngine(sandbox_pool, EXAMPLES, TEST_LIMITS)


async def grade(engine: GradingEngine, grader: str | None, code: str, **payload: Any) -> GradeResult:
    return await engine.grade_body(lms_body(grader, code, **payload))
