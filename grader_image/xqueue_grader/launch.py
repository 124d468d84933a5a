"""Starting the grader from other code (the local demo, tests, benchmarks).

``start_subprocess`` runs ``python -m xqueue_grader run`` exactly as the container does;
``start_in_process`` runs the daemon on the caller's event loop (stop it with ``shutdown()``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from xqueue_grader.config import GraderConfig, config_from_sources
from xqueue_grader.daemon import GraderDaemon


def examples_course_root() -> str:
    """The example course shipped in the repository (``examples/course``)."""
    return str(Path(__file__).resolve().parents[2] / "examples" / "course")


def grader_env(
    *,
    server_url: str,
    queue: str,
    username: str | None = None,
    password: str | None = None,
    grader_root: str | None = None,
    http_port: int = 0,
    slots: int = 2,
    drain_seconds: float = 30,
    limits: Mapping[str, Any] | None = None,
    config_file: str | None = None,
) -> dict[str, str]:
    """The ``XQGRADER_*`` variables for a daemon (see docs/contracts.md)."""
    env = {
        "XQGRADER_SERVER_URL": server_url,
        "XQGRADER_QUEUE": queue,
        "XQGRADER_GRADER_ROOT": grader_root or examples_course_root(),
        "XQGRADER_HTTP_PORT": str(http_port),
        "XQGRADER_SLOTS": str(slots),
        "XQGRADER_DRAIN_SECONDS": str(drain_seconds),
    }
    if username is not None:
        env["XQGRADER_USERNAME"] = username
    if password is not None:
        env["XQGRADER_PASSWORD"] = password
    if config_file:
        env["XQGRADER_CONFIG_FILE"] = config_file
    names = {
        "cpu_seconds": "CPU_SECONDS", "wall_seconds": "WALL_SECONDS", "memory_mb": "MEMORY_MB",
        "processes": "PROCESSES", "file_size_kb": "FILE_SIZE_KB", "output_kb": "OUTPUT_KB",
        "open_files": "OPEN_FILES",
    }
    for key, value in (limits or {}).items():
        env["XQGRADER_LIMIT_" + names[key]] = str(value)
    return env


def start_subprocess(
    env: Mapping[str, str],
    *,
    stderr: int | IO[Any] | None = None,
    user: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m xqueue_grader run`` with ``env`` added to a minimal environment.

    ``user`` (only when running as root) starts the daemon under that uid, as in a pod.
    The caller stops it with ``proc.send_signal(signal.SIGTERM)`` and ``proc.wait()``.
    """
    package_parent = str(Path(__file__).resolve().parents[1])
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONPATH": package_parent,
        "PYTHONUNBUFFERED": "1",
    }
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user, "group": user, "extra_groups": []}
    return subprocess.Popen(
        [sys.executable, "-m", "xqueue_grader", "run"],
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd="/",
        **extra,
    )


async def start_in_process(config: GraderConfig | None = None, **settings: Any) -> GraderDaemon:
    """Start a daemon on the running loop; ``settings`` are YAML-style keys when no config is given.

    Example: ``daemon = await start_in_process(queue="demo", server_url=url, username="grader",
    password="pw", http_port=0, http_host="127.0.0.1")``; later ``await daemon.shutdown()``.
    """
    if config is None:
        config = config_from_sources({}, {"grader_root": examples_course_root(), **settings})
    daemon = GraderDaemon(config)
    await daemon.start()
    return daemon
