"""The sandbox's layer report and the comparison of process settings (pure)."""

from __future__ import annotations

from xqueue_grader.sandbox import procstate, report


def test_the_layer_report_names_what_is_missing() -> None:
    probes = {"unix_socket": True, "datagram_socketpair": True, "netlink_socket": True, "sysv_ipc": True,
              "prlimit_other": True, "setpriority_other": True, "chmod": True, "utime": True}
    full = report.layers({"seccomp": True, "seccomp_denies": probes, "landlock": True, "landlock_abi": 7,
                          "ipc_namespace": True, "capabilities": "0", "rlimits": True, "no_new_privs": True})
    assert all(full["seccomp"]["classes"].values()) and full["landlock"]["signal_and_abstract_socket_scope"]
    assert report.missing(full) == []
    partial = report.layers({"seccomp": True, "seccomp_denies": {**probes, "sysv_ipc": False},
                             "landlock_abi": 0, "capabilities": "20"})
    assert report.missing(partial) == ["seccomp:sysv_ipc", "landlock", "capabilities"]


def test_process_settings_differences() -> None:
    now = procstate.snapshot()
    assert procstate.differences(now, procstate.snapshot()) == []
    changed = {**now, "nice": now["nice"] + 5, "RLIMIT_NOFILE": [3, 3]}
    assert procstate.differences(changed, now) == ["RLIMIT_NOFILE", "nice"]
