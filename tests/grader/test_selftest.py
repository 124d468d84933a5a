"""``xqueue-grader selftest --json``: the real command, as root and as one unprivileged uid (as in a
restricted pod), reporting the layers that are active on this machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from . import as_user
from .targets import MODES, PACKAGE_PARENT, SAME_UID


@pytest.mark.parametrize("mode", MODES)
def test_selftest_reports_every_layer(mode: str) -> None:
    argv = [sys.executable, "-m", "xqueue_grader", "selftest", "--json"]
    if mode == "same_uid":
        argv = as_user.command(SAME_UID, SAME_UID, argv)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": PACKAGE_PARENT}
    done = subprocess.run(argv, env=env, capture_output=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(done.stdout)
    layers = result["layers"]
    assert result["ok"] is True and result["self_test"] is True and result["missing"] == []
    assert layers["seccomp"]["active"] is True
    assert layers["seccomp"]["classes"] == {"unix_sockets": True, "other_socket_families": True, "sysv_ipc": True,
                                            "process_control": True, "file_metadata": True}
    assert layers["landlock"]["active"] is True and layers["landlock"]["abi"] >= 1
    assert layers["no_capabilities"] is True and layers["no_new_privs"] is True and layers["rlimits"] is True
    assert layers["network"] == "socket-denied"
    assert isinstance(layers["ipc_namespace_per_run"], bool) and isinstance(layers["read_only_root"], bool)
    # As root the sandbox runs under another uid; in the pod's mode under the daemon's own.
    assert result["daemon"]["uid"] == (0 if mode == "root" else SAME_UID)
    assert layers["sandbox_uid"] == (65534 if mode == "root" else SAME_UID)
