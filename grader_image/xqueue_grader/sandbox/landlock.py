"""Landlock through raw syscalls (ctypes): unprivileged file-system, TCP and signal confinement.

Landlock is what makes "same uid, yet the student cannot read answer.py" true: file permissions
are useless when student code runs under the grader's uid, but a Landlock domain only lets the
process open what is below the allowed directories.  It needs no privilege, works under Pod
Security "restricted", and is feature-detected (kernel >= 5.13 with the LSM enabled).
ABI >= 4 also denies TCP bind/connect; ABI >= 6 scopes signals and abstract unix sockets to the
sandbox, so student code cannot signal the grader processes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
from collections.abc import Iterable
from typing import Any

# Syscall numbers are the same on x86_64 and aarch64 (asm-generic table).
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

HIGH_FD = 512

READ_ONLY = EXECUTE | READ_FILE | READ_DIR
FILE_READ_WRITE = READ_FILE | WRITE_FILE  # rights valid on a single (non-directory) file


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: ctypes.CDLL | None = None


def _syscall() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc.syscall


def abi_version() -> int:
    """The Landlock ABI the kernel offers; 0 when unavailable (or not on a supported arch)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return 0
    try:
        version = _syscall()(
            _SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
        )
    except (OSError, AttributeError):
        return 0
    return max(0, int(version))


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def _file_rights(abi: int) -> int:
    rights = FILE_READ_WRITE
    if abi >= 3:
        rights |= TRUNCATE
    return rights


class PathRule:
    """A path opened once (O_PATH) with the rights to grant below it.

    The zygote opens the fixed paths at start-up; each run then only adds its own directory,
    which keeps the per-run cost to a few syscalls.
    """

    def __init__(self, path: str, rights: int, is_dir: bool) -> None:
        self.path = path
        low = os.open(path, os.O_PATH | os.O_CLOEXEC)
        try:
            # High numbers: a child rewires fds 0-3 (stdio, results) before it applies the rules.
            self.fd = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
        finally:
            os.close(low)
        self.rights = rights if is_dir else rights & (EXECUTE | READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV)


def open_rules(
    abi: int,
    read_dirs: Iterable[str],
    read_files: Iterable[str],
    rw_files: Iterable[str],
) -> list[PathRule]:
    """The fixed part of the ruleset; paths this uid cannot open are left out (unreadable anyway)."""
    rules = []
    for paths, rights, is_dir in (
        (read_dirs, READ_ONLY, True),
        (read_files, READ_FILE, False),
        (rw_files, _file_rights(abi), False),
    ):
        for path in paths:
            try:
                rules.append(PathRule(path, rights, is_dir))
            except OSError:
                continue
    return rules


def restrict_with(abi: int, rules: list[PathRule], rw_dirs: Iterable[str]) -> None:
    """Confine this process to ``rules`` plus full access below ``rw_dirs``."""
    call = _syscall()
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled, 0, 0)
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    ruleset = call(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                   ctypes.c_uint32(0))
    if ruleset < 0:
        err = ctypes.get_errno()
        raise OSError(err, "landlock_create_ruleset: " + os.strerror(err))
    try:
        for rule in rules:
            _add_fd_rule(call, int(ruleset), rule.fd, rule.rights & handled, rule.path)
        for path in rw_dirs:
            _add_rule(call, int(ruleset), path, handled, True)
        _no_new_privs()
        if call(_SYS_RESTRICT_SELF, int(ruleset), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "landlock_restrict_self: " + os.strerror(err))
    finally:
        os.close(int(ruleset))


def _add_fd_rule(call: Any, ruleset: int, fd: int, rights: int, path: str) -> None:
    rule = _PathBeneathAttr(rights, fd)
    if call(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_add_rule({path}): " + os.strerror(err))


def _no_new_privs() -> None:
    _syscall()
    assert _libc is not None
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_NO_NEW_PRIVS): " + os.strerror(err))


def _add_rule(call: Any, ruleset: int, path: str, rights: int, is_dir: bool) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        # Missing, or unreachable for this uid: the sandboxed process cannot read it either.
        return
    try:
        if not is_dir:
            # Directory-only rights are invalid on files: keep the file subset.
            rights &= EXECUTE | READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV
        rule = _PathBeneathAttr(rights, fd)
        if call(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_add_rule({path}): " + os.strerror(err))
    finally:
        os.close(fd)
