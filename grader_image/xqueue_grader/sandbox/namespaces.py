"""A private IPC namespace per run, where the kernel lets an unprivileged process have one.

``unshare(CLONE_NEWIPC)`` needs CAP_SYS_ADMIN over the current IPC namespace; an unprivileged
process gets that only inside a new user namespace of its own, so both are created together.
No uid mapping is written: inside, the process owns no file (every inode's owner is unmapped),
so the capabilities it holds there apply to nothing but its own new namespaces, and the seccomp
filter installed right after forbids creating any more.  Pods under the RuntimeDefault seccomp
profile usually refuse user namespaces; then the seccomp deny of every IPC syscall stands alone.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000


def unshare_ipc() -> None:
    """Move this (single-threaded) process into a new user + IPC namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWIPC) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "unshare(CLONE_NEWUSER|CLONE_NEWIPC): " + os.strerror(err))


def ipc_namespace_available() -> bool:
    """Try it in a throwaway child (a failed or successful unshare must not change us)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            unshare_ipc()
            code = 0
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
