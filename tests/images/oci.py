"""Run a command of a locally built image under runc, the way a pod's container runs it.

No kubelet and no containerd: ``buildah`` mounts the image's root file system and ``runc`` (the runtime
containerd uses) runs one process on it with the restrictions the chart's securityContext asks for:
read-only root, no capabilities, no-new-privileges, the image's user (or the given one), its own PID,
IPC and mount namespaces. The network namespace is the host's, so a server in the container is
reachable on 127.0.0.1 (tests bind free ports, never the images' defaults).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Mount:
    """A bind mount of a host directory (``source``) or, without one, a fresh tmpfs."""

    target: str
    source: str | None = None
    tmpfs_mode: str = "1777"


@dataclass(frozen=True)
class ImageConfig:
    user: str
    env: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    workdir: str


def image_config(ref: str) -> ImageConfig:
    out = subprocess.run(["buildah", "inspect", "--type", "image", ref], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    config: dict[str, Any] = json.loads(out)["OCIv1"].get("config") or {}
    return ImageConfig(user=config.get("User") or "0:0", env=tuple(config.get("Env") or ()),
                       entrypoint=tuple(config.get("Entrypoint") or ()), cmd=tuple(config.get("Cmd") or ()),
                       workdir=config.get("WorkingDir") or "/")


def _uid_gid(user: str) -> tuple[int, int]:
    # Numeric only: resolving names would mean reading the image's /etc/passwd; our images use ids.
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def oci_spec(rootfs: str, args: Sequence[str], *, user: str, env: Sequence[str], cwd: str,
             mounts: Sequence[Mount]) -> dict[str, Any]:
    """The runtime spec (config.json) for one restricted process. Pure: no I/O."""
    uid, gid = _uid_gid(user)
    spec_mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for mount in mounts:
        if mount.source is None:
            spec_mounts.append({"destination": mount.target, "type": "tmpfs", "source": "tmpfs",
                                "options": ["nosuid", "nodev", f"mode={mount.tmpfs_mode}"]})
        else:
            spec_mounts.append({"destination": mount.target, "type": "bind", "source": mount.source,
                                "options": ["rbind", "rw"]})
    return {
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": True},
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(args),
            "env": list(env),
            "cwd": cwd,
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "noNewPrivileges": True,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
        },
        "hostname": "image-test",
        "mounts": spec_mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def merge_env(image_env: Sequence[str], extra: Mapping[str, str]) -> list[str]:
    """The image's environment with ``extra`` set on top (later wins, like a pod's env)."""
    merged: dict[str, str] = {}
    for item in image_env:
        name, _, value = item.partition("=")
        merged[name] = value
    merged.update(extra)
    return [f"{name}={value}" for name, value in merged.items()]


@dataclass
class Container:
    """One working container of an image (its root file system mounted), running processes under runc."""

    ref: str
    config: ImageConfig
    rootfs: str
    state_dir: Path
    _ids: list[str] = field(default_factory=list)

    def _bundle(self, args: Sequence[str], user: str | None, env: Mapping[str, str],
                mounts: Sequence[Mount]) -> tuple[str, Path]:
        cid = f"imgtest-{uuid.uuid4().hex[:12]}"
        bundle = self.state_dir / cid
        bundle.mkdir()
        spec = oci_spec(self.rootfs, args, user=user or self.config.user, env=merge_env(self.config.env, env),
                        cwd=self.config.workdir, mounts=mounts)
        (bundle / "config.json").write_text(json.dumps(spec))
        self._ids.append(cid)
        return cid, bundle

    def _runc(self, *args: str) -> list[str]:
        return ["runc", "--root", str(self.state_dir / "runc"), *args]

    def run(self, args: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
            mounts: Sequence[Mount] = (), timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run to completion; returns its exit code and output."""
        cid, bundle = self._bundle(args, user, env or {}, mounts)
        try:
            return subprocess.run(self._runc("run", "--bundle", str(bundle), cid), capture_output=True,
                                  text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        finally:
            subprocess.run(self._runc("delete", "--force", cid), capture_output=True, timeout=60)

    def start(self, args: Sequence[str], *, user: str | None = None, env: Mapping[str, str] | None = None,
              mounts: Sequence[Mount] = (), log: Path) -> tuple[str, subprocess.Popen[bytes]]:
        """Start in the background (output to ``log``); stop with :meth:`signal` and wait on the Popen."""
        cid, bundle = self._bundle(args, user, env or {}, mounts)
        with log.open("wb") as out:
            proc = subprocess.Popen(self._runc("run", "--bundle", str(bundle), cid), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return cid, proc

    def exec(self, cid: str, args: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run another process in a running container (like a probe or ``kubectl exec``)."""
        return subprocess.run(self._runc("exec", cid, *args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def signal(self, cid: str, sig: str) -> None:
        subprocess.run(self._runc("kill", cid, sig), capture_output=True, timeout=60)

    def cleanup(self) -> None:
        for cid in self._ids:
            subprocess.run(self._runc("delete", "--force", cid), capture_output=True, timeout=60)


@contextmanager
def container(ref: str) -> Iterator[Container]:
    """A throwaway working container of ``ref`` (which must be in buildah's storage)."""
    name = f"imgtest-{uuid.uuid4().hex[:12]}"
    subprocess.run(["buildah", "from", "--pull=never", "--name", name, ref], check=True, capture_output=True,
                   timeout=120)
    state = Path(tempfile.mkdtemp(prefix="xqueue-imgtest-"))
    try:
        rootfs = subprocess.run(["buildah", "mount", name], check=True, capture_output=True, text=True,
                                timeout=60).stdout.strip()
        box = Container(ref=ref, config=image_config(ref), rootfs=rootfs, state_dir=state)
        try:
            yield box
        finally:
            box.cleanup()
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
