"""The sandbox's seccomp filter (through pyseccomp/libseccomp, optional).

Default action is "allow": the filter is a deny list aimed at what a student could use to leave
the sandbox or reach the grader, not a full syscall allow list (which would break arbitrary
student Python).  Denied calls fail with EPERM, so student code sees a clear PermissionError.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from typing import Any

try:
    import pyseccomp as _sc
except Exception:  # not installed, or libseccomp missing
    _sc = None

# Escapes and introspection: other processes' memory, namespaces, kernel interfaces, io_uring
# (which could perform socket operations without the socket() syscall).
DENIED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
    # Staying in the run's process group is what lets one killpg() end every process of a run.
    "setsid", "setpgid",
)

# clone() flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

MASK32 = 0xFFFFFFFF


def available() -> bool:
    return _sc is not None


def build_filter(protected_pids: Iterable[int]) -> Any:
    """The filter for one run; ``protected_pids`` are processes student code must not signal.

    Signal targets are compared on their low 32 bits (pid_t is 32-bit and the upper register half
    is not defined); negative values name process groups (``-1`` means "every process").
    """
    if _sc is None:
        raise RuntimeError("pyseccomp is not available")
    deny = _sc.ERRNO(errno.EPERM)
    flt = _sc.SyscallFilter(_sc.ALLOW)
    flt.add_rule(deny, "socket", _sc.Arg(0, _sc.NE, socket.AF_UNIX))
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except OSError:
            # A syscall unknown to this libseccomp/arch cannot be called either.
            continue
    # clone3 passes its flags in memory, which seccomp cannot inspect: report ENOSYS so libc
    # falls back to clone(), whose flags we can check.
    flt.add_rule(_sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in NAMESPACE_FLAGS:
        flt.add_rule(deny, "clone", _sc.Arg(0, _sc.MASKED_EQ, flag, flag))
    for target in sorted({-1, *protected_pids}):
        value = target & MASK32
        for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
            flt.add_rule(deny, name, _sc.Arg(0, _sc.MASKED_EQ, MASK32, value))
    return flt


def install(protected_pids: Iterable[int]) -> None:
    """Load the filter into this process (sets no_new_privs as a side effect)."""
    build_filter(protected_pids).load()


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

    def load(self) -> None:
        """Install into this process; no_new_privs must already be set."""
        pr_set_seccomp, seccomp_mode_filter = 22, 2
        if self._libc.prctl(pr_set_seccomp, seccomp_mode_filter, self._ctypes.byref(self._prog), 0, 0) != 0:
            err = self._ctypes.get_errno()
            raise OSError(err, "prctl(PR_SET_SECCOMP)")


def compile_filter(protected_pids: Iterable[int]) -> CompiledFilter:
    """Build the filter with libseccomp and export its BPF program."""
    import os
    import tempfile

    flt = build_filter(protected_pids)
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.flush()
        os.lseek(fh.fileno(), 0, os.SEEK_SET)
        bpf = fh.read()
    return CompiledFilter(bpf)
