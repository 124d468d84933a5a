"""The isolation layers a sandbox has, as one document (pure: built from the zygote's features).

``xqueue-grader selftest --json`` prints it, the daemon logs it at start-up, and the metrics
export it, so an operator (or a test inside a real pod) can see which layers are active there.
"""

from __future__ import annotations

from typing import Any

# Classes the seccomp probe tries from inside a real sandboxed child (zygote._probe_denials).
SECCOMP_CLASSES = {
    "unix_sockets": ("unix_socket", "datagram_socketpair"),
    "other_socket_families": ("netlink_socket",),
    "sysv_ipc": ("sysv_ipc",),
    "process_control": ("prlimit_other", "setpriority_other"),
    "file_metadata": ("chmod", "utime"),
}


def layers(features: dict[str, Any]) -> dict[str, Any]:
    denied = features.get("seccomp_denies") or {}
    seccomp_on = bool(features.get("seccomp"))
    abi = int(features.get("landlock_abi") or 0)
    return {
        "seccomp": {
            "active": seccomp_on,
            "classes": {name: seccomp_on and all(denied.get(probe) is True for probe in probes)
                        for name, probes in SECCOMP_CLASSES.items()},
        },
        "landlock": {
            "active": bool(features.get("landlock")),
            "abi": abi,
            "signal_and_abstract_socket_scope": abi >= 6,
            "tcp": abi >= 4,
            "truncate": abi >= 3,
        },
        "ipc_namespace_per_run": bool(features.get("ipc_namespace")),
        "network": features.get("network", "open"),
        "rlimits": bool(features.get("rlimits")),
        "no_new_privs": bool(features.get("no_new_privs")),
        "capabilities": features.get("capabilities", "unknown"),
        "no_capabilities": features.get("capabilities") == "0",
        "read_only_root": bool(features.get("read_only_root")),
        "sandbox_uid": features.get("uid"),
        "exposed_paths": list(features.get("exposed_paths") or []),
    }


def missing(report: dict[str, Any]) -> list[str]:
    """Layers that are off (for a warning; whether that is acceptable is the operator's call)."""
    gaps = []
    if not report["seccomp"]["active"]:
        gaps.append("seccomp")
    else:
        gaps += [f"seccomp:{name}" for name, ok in report["seccomp"]["classes"].items() if not ok]
    if not report["landlock"]["active"]:
        gaps.append("landlock")
    if not report["no_capabilities"]:
        gaps.append("capabilities")
    if report["exposed_paths"]:
        gaps.append("exposed_paths")
    return gaps
