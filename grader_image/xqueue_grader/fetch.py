"""``xqueue-grader fetch-course``: put a course grader repository in place (init container).

Reads ``XQGRADER_REPO_URL``, ``XQGRADER_REPO_REF`` (branch, tag or commit; default: the remote's
default branch), ``XQGRADER_REPO_SUBPATH`` (the part of the repository that is the grader root)
and ``XQGRADER_REPO_CREDENTIALS_DIR`` (optional: ``ssh-privatekey`` [+ ``known_hosts``] as in a
kubernetes.io/ssh-auth Secret, or ``username`` + ``password`` as in a basic-auth Secret), and
fills ``XQGRADER_GRADER_ROOT``.

The checkout happens in a sibling directory and is swapped in with renames, so a restarted init
container never leaves a half-written course.  ``.git`` is removed afterwards: the daemon does not
need it and it may hold a URL with a token.  Every git call is bounded in time; the fetch is
retried a bounded number of times.

The course is left without write permission for anyone.  In a restricted pod it belongs to the
uid that student code runs under; where Landlock is missing, that code could otherwise rewrite
``answer.py`` for every later student, and the sandbox's seccomp filter forbids the chmod that
would give the write permission back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger("xqueue_grader.fetch")

GIT_TIMEOUT = 300
ATTEMPTS = 3


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class FetchSettings:
    repo_url: str
    grader_root: str
    ref: str | None = None
    subpath: str | None = None
    credentials_dir: str | None = None


def settings_from_env(env: Mapping[str, str]) -> FetchSettings:
    url = env.get("XQGRADER_REPO_URL", "").strip()
    if not url:
        raise FetchError("XQGRADER_REPO_URL is required")
    subpath = env.get("XQGRADER_REPO_SUBPATH", "").strip().strip("/") or None
    if subpath and (subpath.startswith("/") or ".." in subpath.split("/")):
        raise FetchError("XQGRADER_REPO_SUBPATH must be a relative path without '..'")
    return FetchSettings(
        repo_url=url,
        grader_root=env.get("XQGRADER_GRADER_ROOT", "/grader/course").rstrip("/") or "/grader/course",
        ref=env.get("XQGRADER_REPO_REF", "").strip() or None,
        subpath=subpath,
        credentials_dir=env.get("XQGRADER_REPO_CREDENTIALS_DIR", "").strip() or None,
    )


def redact_url(url: str) -> str:
    """The URL without user info (tokens are often embedded there)."""
    return re.sub(r"(?<=://)[^/@]+@", "", url)


ASKPASS = """#!/bin/sh
# Answers git's credential prompts from files; never puts secrets on a command line.
case "$1" in
  Username*) cat "$XQGRADER_CRED_DIR/username" ;;
  *) cat "$XQGRADER_CRED_DIR/password" ;;
esac
"""


def git_env(settings: FetchSettings, workdir: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": workdir,  # a read-only image: git may want to write a config somewhere
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LANG": "C.UTF-8",
    }
    creds = settings.credentials_dir
    if creds:
        key = os.path.join(creds, "ssh-privatekey")
        if os.path.exists(key):
            known = os.path.join(creds, "known_hosts")
            host_check = (f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes" if os.path.exists(known)
                          else f"-o UserKnownHostsFile={workdir}/known_hosts -o StrictHostKeyChecking=accept-new")
            env["GIT_SSH_COMMAND"] = f"ssh -i {key} -o IdentitiesOnly=yes -o BatchMode=yes {host_check}"
        if os.path.exists(os.path.join(creds, "password")):
            askpass = os.path.join(workdir, "askpass.sh")
            with open(askpass, "w") as fh:
                fh.write(ASKPASS)
            os.chmod(askpass, 0o700)
            env["GIT_ASKPASS"] = askpass
            env["XQGRADER_CRED_DIR"] = creds
    return env


def _git(args: list[str], cwd: str, env: dict[str, str]) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"git {args[0]} timed out") from None
    if done.returncode != 0:
        # git's stderr may echo the URL: redact it before it reaches a log.
        raise FetchError(f"git {args[0]} failed: {redact_url(done.stderr.strip())[-500:]}")
    return done.stdout


def checkout(settings: FetchSettings, target: str, env: dict[str, str]) -> str:
    """Fetch the ref into ``target`` (an empty directory); returns the commit id."""
    _git(["init", "-q", target], cwd=os.path.dirname(target), env=env)
    _git(["remote", "add", "origin", settings.repo_url], cwd=target, env=env)
    ref = settings.ref or "HEAD"
    try:
        # Shallow fetch of exactly one ref (branch, tag or commit id).
        _git(["fetch", "-q", "--depth", "1", "origin", ref], cwd=target, env=env)
    except FetchError:
        # Some servers refuse shallow fetches of commit ids: fetch everything, then pick it.
        _git(["fetch", "-q", "--tags", "origin", "+refs/heads/*:refs/remotes/origin/*"], cwd=target, env=env)
        _git(["rev-parse", "--verify", ref + "^{commit}"], cwd=target, env=env)
        _git(["checkout", "-q", "--detach", ref], cwd=target, env=env)
        return _git(["rev-parse", "HEAD"], cwd=target, env=env).strip()
    _git(["checkout", "-q", "--detach", "FETCH_HEAD"], cwd=target, env=env)
    return _git(["rev-parse", "HEAD"], cwd=target, env=env).strip()


def fetch_course(settings: FetchSettings, backoff_seconds: float = 2.0) -> dict[str, str]:
    """Fetch (with bounded retries) and swap the course into place; returns what was installed.

    Attempt n waits ``backoff_seconds * 2**(n-1)`` (at most 10 s) before the next one.
    """
    root = os.path.abspath(settings.grader_root)
    parent = os.path.dirname(root)
    last_error: Exception | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            # Next to the root when possible (a rename then swaps it in atomically); elsewhere
            # when the root is itself a volume mount in a read-only parent.
            staging = tempfile.mkdtemp(prefix=".fetch-", dir=parent)
        except OSError:
            staging = tempfile.mkdtemp(prefix="xqgrader-fetch-")
        try:
            env = git_env(settings, staging)
            repo = os.path.join(staging, "repo")
            commit = checkout(settings, repo, env)
            source = os.path.join(repo, settings.subpath) if settings.subpath else repo
            real_repo = os.path.realpath(repo)
            real_source = os.path.realpath(source)
            if not (real_source == real_repo or real_source.startswith(real_repo + "/")):
                raise FetchError("XQGRADER_REPO_SUBPATH leaves the repository")
            if not os.path.isdir(real_source):
                raise FetchError("XQGRADER_REPO_SUBPATH is not a directory in the repository")
            shutil.rmtree(os.path.join(repo, ".git"), ignore_errors=True)
            info = {"repo_url": redact_url(settings.repo_url), "ref": settings.ref or "HEAD", "commit": commit,
                    "subpath": settings.subpath or ""}
            with open(os.path.join(real_source, ".xqgrader-source.json"), "w") as fh:
                json.dump(info, fh)
            _swap_in(real_source, root, staging)
            seal(root)
            return info
        except (FetchError, OSError) as exc:
            last_error = exc
            log.warning("course fetch failed", extra={"fields": {"attempt": attempt, "error": str(exc)}})
            if attempt < ATTEMPTS:
                time.sleep(min(10.0, backoff_seconds * 2 ** (attempt - 1)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    raise FetchError(f"could not fetch the course after {ATTEMPTS} attempts: {last_error}")


def _chmod(path: str, change: Callable[[int], int]) -> None:
    """Best effort and never through a symlink: a root that is a volume mount point may belong
    to someone else, and its contents are what matters."""
    with contextlib.suppress(OSError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode):
            os.chmod(path, change(stat.S_IMODE(mode)))


def seal(root: str) -> None:
    """Take every write permission away from the course (files and folders)."""
    if not os.path.isdir(root) or os.path.islink(root):
        return
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [os.path.join(dirpath, name) for name in dirnames + filenames]
    for path in paths:
        _chmod(path, lambda mode: mode & ~0o222)


def unseal(root: str) -> None:
    """Give the owner write permission back on the folders, so the course can be replaced."""
    if not os.path.isdir(root) or os.path.islink(root):
        return
    _chmod(root, lambda mode: mode | 0o200)
    for dirpath, dirnames, _files in os.walk(root):
        for name in dirnames:
            _chmod(os.path.join(dirpath, name), lambda mode: mode | 0o200)


def _swap_in(source: str, root: str, staging: str) -> None:
    # A previous course was sealed: moving or emptying it needs write permission again.
    unseal(root)
    try:
        old = None
        if os.path.lexists(root):
            old = os.path.join(staging, "previous")
            os.rename(root, old)
        try:
            os.rename(source, root)
        except OSError:
            if old:
                os.rename(old, root)  # put the previous course back before trying the slow way
            raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        # The root is a mount point (EBUSY) or on another file system (EXDEV): replace its
        # contents instead of the directory itself.
        os.makedirs(root, exist_ok=True)
        for entry in os.listdir(root):
            path = os.path.join(root, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        for entry in os.listdir(source):
            shutil.move(os.path.join(source, entry), os.path.join(root, entry))
