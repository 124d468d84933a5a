"""``xqueue-grader fetch-course`` with real git against a local repository (file:// URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xqueue_grader.fetch import FetchError, FetchSettings, fetch_course, redact_url, settings_from_env

from .helpers import git


@pytest.fixture
def course_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository with two commits on main and a tag on the first."""
    repo = tmp_path / "origin"
    (repo / "graders" / "square").mkdir(parents=True)
    git(repo.parent, "init", "-q", "-b", "main", str(repo))
    (repo / "graders" / "square" / "grade_square.py").write_text("# version 1\n")
    (repo / "graders" / "square" / "answer.py").write_text("def square(x): return x * x\n")
    (repo / "README.md").write_text("course\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    (repo / "graders" / "square" / "grade_square.py").write_text("# version 2\n")
    git(repo, "commit", "-q", "-am", "two")
    second = git(repo, "rev-parse", "HEAD")
    return repo, first, second


def test_fetches_default_branch_subpath_and_removes_git(course_repo: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, _first, second = course_repo
    root = tmp_path / "grader" / "course"
    root.parent.mkdir()
    info = fetch_course(FetchSettings(repo_url=f"file://{repo}", grader_root=str(root), subpath="graders"))
    assert info["commit"] == second
    assert (root / "square" / "grade_square.py").read_text() == "# version 2\n"
    assert not (root / ".git").exists() and not (root / "README.md").exists()
    assert json.loads((root / ".xqgrader-source.json").read_text())["commit"] == second
    assert [p.name for p in root.parent.iterdir()] == ["course"], "no staging directories left behind"


@pytest.mark.parametrize("ref_kind", ["tag", "commit"])
def test_fetches_a_tag_or_a_commit_and_replaces_a_previous_course(course_repo: tuple[Path, str, str],
                                                                    tmp_path: Path, ref_kind: str) -> None:
    repo, first, _second = course_repo
    root = tmp_path / "course"
    root.mkdir()
    (root / "stale.py").write_text("old course")
    ref = "v1" if ref_kind == "tag" else first
    info = fetch_course(FetchSettings(repo_url=f"file://{repo}", grader_root=str(root), ref=ref, subpath="graders"))
    assert info["commit"] == first
    assert (root / "square" / "grade_square.py").read_text() == "# version 1\n"
    assert not (root / "stale.py").exists()


def test_bad_settings_and_unreachable_repositories(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="XQGRADER_REPO_URL is required"):
        settings_from_env({})
    with pytest.raises(FetchError, match=r"without '\.\.'"):
        settings_from_env({"XQGRADER_REPO_URL": "file:///x", "XQGRADER_REPO_SUBPATH": "../etc"})
    with pytest.raises(FetchError, match="after 3 attempts"):
        fetch_course(FetchSettings(repo_url=f"file://{tmp_path}/missing", grader_root=str(tmp_path / "c")),
                     backoff_seconds=0.05)
    assert not (tmp_path / "c").exists()


def test_tokens_in_urls_are_redacted() -> None:
    assert redact_url("https://user:tok3n@git.example.org/course.git") == "https://git.example.org/course.git"


def test_cli_fetch_course(course_repo: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, _first, second = course_repo
    root = tmp_path / "g" / "course"
    root.parent.mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "XQGRADER_REPO_URL": f"file://{repo}",
           "XQGRADER_GRADER_ROOT": str(root), "XQGRADER_REPO_SUBPATH": "graders",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "grader_image")}
    done = subprocess.run([sys.executable, "-m", "xqueue_grader", "fetch-course"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stderr.strip().splitlines()[-1])["commit"] == second
    assert (root / "square" / "answer.py").exists()
