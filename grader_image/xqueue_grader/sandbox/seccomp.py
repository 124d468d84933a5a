"""The sandbox's seccomp filter (through pyseccomp/libseccomp, optional).

Default action is "allow": the filter is a deny list aimed at what a student could use to leave
the sandbox, reach the grader or another run, not a full syscall allow list (which would break
arbitrary student Python).  Denied calls fail with EPERM, so student code sees a clear
PermissionError.

In a restricted pod the daemon, the zygote and every run share one uid, so the kernel's "same
owner" checks protect nothing between them.  The filter therefore closes whole classes of
same-uid interference, each with the arguments seccomp can see (it cannot read memory, so no
paths and no socket addresses):

* sockets: no ``socket()`` of any family (no IP, no unix sockets of databases or other
  services, no abstract names, no netlink); ``socketpair()`` only as an AF_UNIX *stream* pair,
  which is connected to itself from birth and can never be pointed anywhere else;
* IPC objects that outlive a run (SysV shared memory, queues, semaphores; POSIX message queues);
* control of other processes: limits, priorities, scheduling and I/O priority only of the
  caller itself; no signals to the grader's processes or to any process group;
* file metadata: no chmod, chown, times or extended attributes (Landlock does not cover them),
  so neither the scratch root nor a course file owned by this uid can be changed.
"""

from __future__ import annotations

import errno
import platform
import socket
from collections.abc import Iterable
from typing import Any

try:
    import pyseccomp as _sc  # ships no type information: pyproject's [tool.mypy] lets it be untyped
except Exception:  # not installed, or libseccomp missing
    _sc = None

# Escapes and introspection: other processes' memory, namespaces, kernel interfaces, io_uring
# (which could perform socket operations without the socket() syscall).
ESCAPE_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "kcmp",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "mount_setattr",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog",
    # Staying in the run's process group is what lets one killpg() end every process of a run.
    "setsid", "setpgid",
)
# Student code gets no socket of its own: connecting, binding and listening are useless without
# one, and denying them too means an fd smuggled in some other way is of no use either.
SOCKET_SYSCALLS = ("socket", "socketcall", "connect", "bind", "listen", "accept", "accept4")
# SysV IPC objects and POSIX message queues belong to the IPC namespace, not to a run: what one
# run leaves there, a later run of another student could read.
IPC_SYSCALLS = (
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semtimedop_time64", "semctl", "ipc",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)
# Metadata of files this uid owns: the scratch root, other runs' directories, course files in a
# restricted pod.  Landlock has no right for these, and seccomp cannot see the path, so they are
# denied everywhere (a student's own files are created with the right mode already).
METADATA_SYSCALLS = (
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "chown32", "fchown32", "lchown32", "utime", "utimes", "futimesat", "utimensat",
    "utimensat_time64", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "setxattrat", "removexattrat", "file_setattr",
)
# Syscalls newer than libseccomp 2.5 knows by name; the numbers are the same on x86_64 and
# aarch64 (the unified table every architecture uses for new syscalls).
NEW_SYSCALL_NUMBERS = {
    "mount_setattr": 442, "quotactl_fd": 443, "process_mrelease": 448, "fchmodat2": 452,
    "setxattrat": 463, "removexattrat": 466, "file_setattr": 469,
}
# Calls that act on a process named by its first argument (0 = the caller): allowed only on the
# caller, so no run can lower the limits, raise the nice value or move the CPUs or memory of the
# daemon, the zygote or another run.
SELF_ONLY_SYSCALLS = (
    "prlimit64", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_setaffinity",
    "migrate_pages", "move_pages",
)
SIGNAL_SYSCALLS = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
# Signal calls whose first argument names a process group when negative.
GROUP_SIGNAL_SYSCALLS = ("kill", "rt_sigqueueinfo")

PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1
SOCK_TYPE_MASK = 0xF

# clone() flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

MASK32 = 0xFFFFFFFF
SIGN32 = 0x80000000


def available() -> bool:
    return _sc is not None


def _deny_all(flt: Any, action: int, names: Iterable[str]) -> list[str]:
    """Deny each syscall unconditionally; returns the names this libseccomp/arch lacks."""
    missing = []
    numbered = platform.machine() in ("x86_64", "aarch64")
    for name in names:
        try:
            flt.add_rule(action, name)
            continue
        except (OSError, ValueError):
            pass
        number = NEW_SYSCALL_NUMBERS.get(name)
        if number is not None and numbered:
            flt.add_rule(action, number)
        else:
            # Unknown to this libseccomp and not a newer syscall: the arch does not have it.
            missing.append(name)
    return missing


def _deny_unless_self(flt: Any, action: int, name: str, *arg_values: tuple[int, int]) -> None:
    """Deny ``name`` when any listed argument differs from its value (64-bit comparison: a
    value with stray upper bits is denied too, the safe direction)."""
    try:
        for index, value in arg_values:
            flt.add_rule(action, name, _sc.Arg(index, _sc.NE, value))
    except (OSError, ValueError):
        return  # not on this arch


def build_filter(protected_pids: Iterable[int], *, deny_path_truncate: bool = False) -> Any:
    """The filter for one run; ``protected_pids`` are processes student code must not signal.

    Signal targets are compared on their low 32 bits (pid_t is 32-bit and the upper register half
    is not defined); negative values name process groups and are denied altogether (a run is a
    single process group, and ``kill(0, ...)`` still reaches all of it).
    ``deny_path_truncate``: without Landlock's truncate right (ABI < 3), ``truncate(path)`` would
    reach files this uid owns outside the run (``ftruncate`` of an open file stays allowed).
    """
    if _sc is None:
        raise RuntimeError("pyseccomp is not available")
    deny = _sc.ERRNO(errno.EPERM)
    flt = _sc.SyscallFilter(_sc.ALLOW)
    _deny_all(flt, deny, ESCAPE_SYSCALLS + SOCKET_SYSCALLS + IPC_SYSCALLS + METADATA_SYSCALLS)
    if deny_path_truncate:
        _deny_all(flt, deny, ("truncate", "truncate64"))
    # socketpair: AF_UNIX stream pairs only (asyncio's self-pipe, multiprocessing.Pipe()).  A
    # datagram pair could still sendto() any named socket, so every other type is denied.
    flt.add_rule(deny, "socketpair", _sc.Arg(0, _sc.NE, socket.AF_UNIX))
    for kind in range(SOCK_TYPE_MASK + 1):
        if kind != socket.SOCK_STREAM:
            flt.add_rule(deny, "socketpair", _sc.Arg(1, _sc.MASKED_EQ, SOCK_TYPE_MASK, kind))
    for name in SELF_ONLY_SYSCALLS:
        _deny_unless_self(flt, deny, name, (0, 0))
    # setpriority(PRIO_PROCESS, 0, n) is what os.nice() does; PRIO_PGRP/PRIO_USER or another
    # pid would reach the daemon and the zygote.
    _deny_unless_self(flt, deny, "setpriority", (0, PRIO_PROCESS), (1, 0))
    _deny_unless_self(flt, deny, "ioprio_set", (0, IOPRIO_WHO_PROCESS), (1, 0))
    # clone3 passes its flags in memory, which seccomp cannot inspect: report ENOSYS so libc
    # falls back to clone(), whose flags we can check.
    flt.add_rule(_sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in NAMESPACE_FLAGS:
        flt.add_rule(deny, "clone", _sc.Arg(0, _sc.MASKED_EQ, flag, flag))
    for name in GROUP_SIGNAL_SYSCALLS:
        flt.add_rule(deny, name, _sc.Arg(0, _sc.MASKED_EQ, SIGN32, SIGN32))
    for target in sorted({-1, *protected_pids}):
        if target < 0:
            continue  # every process group is denied above
        for name in SIGNAL_SYSCALLS:
            flt.add_rule(deny, name, _sc.Arg(0, _sc.MASKED_EQ, MASK32, target & MASK32))
    return flt


def install(protected_pids: Iterable[int], *, deny_path_truncate: bool = False) -> None:
    """Load the filter into this process (sets no_new_privs as a side effect)."""
    build_filter(protected_pids, deny_path_truncate=deny_path_truncate).load()


class CompiledFilter:
    """A filter compiled to BPF once (in the zygote) and loaded with one prctl per run.

    Building the filter with libseccomp costs milliseconds; loading precompiled BPF costs
    microseconds, which matters at one filter per sandboxed run.
    """

    def __init__(self, bpf: bytes) -> None:
        import ctypes

        if not bpf or len(bpf) % 8:
            raise ValueError("not a BPF program")

        class _SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self._buffer = ctypes.create_string_buffer(bpf, len(bpf))
        self._prog = _SockFprog(len(bpf) // 8, ctypes.addressof(self._buffer))
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._ctypes = ctypes
        self.instructions = len(bpf) // 8

    def load(self) -> None:
        """Install into this process; no_new_privs must already be set."""
        pr_set_seccomp, seccomp_mode_filter = 22, 2
        if self._libc.prctl(pr_set_seccomp, seccomp_mode_filter, self._ctypes.byref(self._prog), 0, 0) != 0:
            err = self._ctypes.get_errno()
            raise OSError(err, "prctl(PR_SET_SECCOMP)")


def compile_filter(protected_pids: Iterable[int], *, deny_path_truncate: bool = False) -> CompiledFilter:
    """Build the filter with libseccomp and export its BPF program."""
    import os
    import tempfile

    flt = build_filter(protected_pids, deny_path_truncate=deny_path_truncate)
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.flush()
        os.lseek(fh.fileno(), 0, os.SEEK_SET)
        bpf = fh.read()
    return CompiledFilter(bpf)
