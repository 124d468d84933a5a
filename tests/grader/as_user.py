"""Run a command as an unprivileged uid, the way a Pod Security "restricted" pod runs the grader.

The tests run as root; the "same uid" mode needs the daemon, the zygote and student code all under
one ordinary uid without capabilities.  Executed as a script by root, this:

1. enters a private mount namespace (nothing below changes the machine), and makes the paths the
   process needs (the Python installation, the virtualenv, the repository) reachable for that uid:
   a directory it may not traverse (say ``/root`` holding a pyenv interpreter) is covered with an
   empty tmpfs into which only the needed entries are bind-mounted back;
2. sets no_new_privs (``allowPrivilegeEscalation: false``), drops every group, the gid and the
   uid for good (which also drops every capability), and executes the command.

``command(uid, gid, argv)`` builds the argument vector for ``subprocess.Popen``.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
REPO = str(Path(__file__).resolve().parents[2])


def default_reach() -> list[str]:
    """What a Python process of this installation needs to read."""
    return sorted({sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)), REPO})


def command(uid: int, gid: int, argv: list[str], reach: list[str] | None = None) -> list[str]:
    spec = {"uid": uid, "gid": gid, "argv": argv, "reach": reach if reach is not None else default_reach()}
    return [sys.executable, os.path.abspath(__file__), json.dumps(spec)]


def can_traverse(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def blocked_dirs(paths: list[str], uid: int, gid: int) -> dict[str, set[str]]:
    """Untraversable directory -> the entries below it that ``paths`` need."""
    blocked: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(os.path.realpath(path)).parts
        for depth in range(1, len(parts)):
            directory = os.path.join(*parts[:depth])
            if not can_traverse(directory, uid, gid):
                blocked.setdefault(directory, set()).add(parts[depth])
                break
    return blocked


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def open_up(libc: ctypes.CDLL, paths: list[str], uid: int, gid: int) -> None:
    for _ in range(10):
        blocked = blocked_dirs(paths, uid, gid)
        if not blocked:
            return
        for directory, names in blocked.items():
            keep = {name: os.open(os.path.join(directory, name), os.O_PATH) for name in names}
            _check(libc.mount(b"tmpfs", directory.encode(), b"tmpfs", 0, b"mode=0755"), f"tmpfs on {directory}")
            for name, fd in keep.items():
                target = os.path.join(directory, name)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.mkdir(target)
                else:
                    open(target, "w").close()
                _check(libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, MS_BIND | MS_REC, None),
                       f"bind {target}")
                os.close(fd)
    raise RuntimeError(f"cannot make {paths} reachable for uid {uid}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    uid, gid = int(spec["uid"]), int(spec["gid"])
    libc = ctypes.CDLL(None, use_errno=True)
    if blocked_dirs(spec["reach"], uid, gid):
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        open_up(libc, spec["reach"], uid, gid)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    argv = spec["argv"]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
