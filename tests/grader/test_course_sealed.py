"""``fetch-course`` leaves the course without write permission, as the unprivileged uid of a
restricted pod, and can still replace it on the next start: the course then belongs to the uid
that student code runs under, so without Landlock only the missing write bits (which seccomp
keeps missing: no chmod) stop a run from rewriting ``answer.py`` for every later student."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import as_user
from .helpers import git
from .targets import PACKAGE_PARENT, SAME_UID, chown_tree


@pytest.fixture
def area() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="xqgrader-seal-"))
    os.chmod(base, 0o755)
    repo = base / "origin"
    (repo / "square").mkdir(parents=True)
    git(base, "init", "-q", "-b", "main", str(repo))
    (repo / "square" / "answer.py").write_text("def square(x): return x * x\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    (base / "grader").mkdir()  # the course volume, like an emptyDir
    chown_tree(str(base), SAME_UID, SAME_UID)
    yield base
    subprocess.run(["chmod", "-R", "u+w", str(base)], check=False)
    shutil.rmtree(base, ignore_errors=True)


def as_pod_uid(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    full = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": PACKAGE_PARENT,
            "HOME": "/tmp", **env}
    return subprocess.run(as_user.command(SAME_UID, SAME_UID, argv), env=full, capture_output=True, timeout=120,
                          cwd="/")


def test_fetched_course_is_read_only_and_replaceable_by_its_unprivileged_owner(area: Path) -> None:
    root = area / "grader" / "course"
    env = {"XQGRADER_REPO_URL": f"file://{area / 'origin'}", "XQGRADER_GRADER_ROOT": str(root),
           "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
    fetch = [sys.executable, "-m", "xqueue_grader", "fetch-course"]
    first = as_pod_uid(fetch, env)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    answer = root / "square" / "answer.py"
    for path in (root, root / "square", answer):
        assert path.stat().st_uid == SAME_UID
        assert stat.S_IMODE(path.stat().st_mode) & 0o222 == 0, oct(path.stat().st_mode)
    # The owner itself cannot write (without chmod, which the sandbox's seccomp filter denies).
    write = as_pod_uid([sys.executable, "-c", f"open({str(answer)!r}, 'a')"], {})
    assert write.returncode != 0 and b"PermissionError" in write.stderr
    # A restarted init container replaces the sealed course with a new version.
    (area / "origin" / "square" / "answer.py").write_text("def square(x): return x ** 2\n")
    git(area / "origin", "-c", "safe.directory=*", "commit", "-q", "-am", "two")
    subprocess.run(["chown", "-R", f"{SAME_UID}:{SAME_UID}", str(area / "origin")], check=True)
    second = as_pod_uid(fetch, env)
    assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert answer.read_text() == "def square(x): return x ** 2\n"
    assert stat.S_IMODE(answer.stat().st_mode) & 0o222 == 0
