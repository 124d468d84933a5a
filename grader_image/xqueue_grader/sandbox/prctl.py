"""The few prctl(2) calls the sandbox needs (no privilege required for any of them)."""

from __future__ import annotations

import ctypes
import os

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def set_dumpable(flag: bool) -> None:
    """A non-dumpable process's /proc files (environ, mem, fd, cwd) and ptrace are closed to
    other processes of the same uid: the defence for "student and grader share a uid"."""
    prctl(PR_SET_DUMPABLE, 1 if flag else 0)


def set_child_subreaper() -> None:
    """Orphans of our descendants are reparented to us (not to init), so we can find and kill
    background processes that student code tried to detach."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def set_parent_death_signal(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_no_new_privs() -> None:
    """Required for an unprivileged seccomp filter or Landlock domain; blocks setuid binaries."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)
