"""Run the containers of a rendered pod spec as local processes: a stand-in for the kubelet.

kwok only pretends to run pods, so on their own the chart tests would prove that objects exist, not
that their commands, environment, Secret keys and mount paths fit the programs in the images. Here
a container's command runs from this checkout's virtualenv with the environment the kubelet would
give it: ``value`` and ``secretKeyRef``/``configMapKeyRef`` entries resolved through the API
server, ``envFrom`` likewise, and Secret/ConfigMap/emptyDir volumes materialised under a temporary
directory, with mount paths in arguments and values rewritten to those directories. Network
settings a test must keep on 127.0.0.1 are passed as overrides (environment) or as ``addresses``
(cluster URLs in arguments and values mapped to loopback ones: a stand-in for cluster DNS).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.cluster.controlplane import ControlPlane


class LocalPod:
    """One pod spec's volumes and environment, in ``root``, read from namespace ``namespace``."""

    def __init__(self, kube: ControlPlane, namespace: str, pod_spec: Mapping[str, Any], root: Path) -> None:
        self.kube = kube
        self.namespace = namespace
        self.spec = pod_spec
        self.root = root
        root.mkdir(parents=True, exist_ok=True)  # the working directory, also for pods without volumes
        self.volumes: dict[str, Path] = {}
        for volume in pod_spec.get("volumes", []):
            self.volumes[volume["name"]] = self._materialise(volume)

    def _object_data(self, kind: str, name: str) -> dict[str, str]:
        obj = json.loads(self.kube.kubectl("get", kind, name, "-n", self.namespace, "-o", "json").stdout)
        if kind == "secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    def _materialise(self, volume: Mapping[str, Any]) -> Path:
        path = self.root / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "secret" in volume:
            spec, data = volume["secret"], self._object_data("secret", volume["secret"]["secretName"])
        elif "configMap" in volume:
            spec, data = volume["configMap"], self._object_data("configmap", volume["configMap"]["name"])
        else:  # emptyDir and persistentVolumeClaim: an empty directory is what the container sees first
            return path
        for item in spec.get("items") or [{"key": k, "path": k} for k in data]:
            target = path / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
        return path

    def container(self, name: str, *, init: bool = False) -> dict[str, Any]:
        containers = self.spec.get("initContainers" if init else "containers", [])
        return next(c for c in containers if c["name"] == name)

    def mounts(self, container: Mapping[str, Any]) -> dict[str, Path]:
        """mountPath -> local directory, longest paths first (so nested mounts win)."""
        pairs = {m["mountPath"]: self.volumes[m["name"]] for m in container.get("volumeMounts", [])}
        return dict(sorted(pairs.items(), key=lambda kv: -len(kv[0])))

    def localise(self, text: str, mounts: Mapping[str, Path]) -> str:
        """Rewrite mount paths in one pass (a replaced path may itself lie under /tmp, a mount too)."""
        if not mounts:
            return text
        # Longest first, and only whole path components: /var/run/x must not match /var/run/xy.
        pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(m) for m in mounts) + r")(?=/|$|[^\w.-])")
        return pattern.sub(lambda m: str(mounts[m.group(1)]), text)

    def environment(self, container: Mapping[str, Any]) -> dict[str, str]:
        mounts = self.mounts(container)
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if ref := source.get("secretRef"):
                env.update(self._object_data("secret", ref["name"]))
            elif ref := source.get("configMapRef"):
                env.update(self._object_data("configmap", ref["name"]))
        for entry in container.get("env", []):
            if "value" in entry:
                env[entry["name"]] = self.localise(str(entry["value"]), mounts)
                continue
            source = entry["valueFrom"]
            if ref := source.get("secretKeyRef"):
                env[entry["name"]] = self._object_data("secret", ref["name"])[ref["key"]]
            elif ref := source.get("configMapKeyRef"):
                env[entry["name"]] = self._object_data("configmap", ref["name"])[ref["key"]]
            elif ref := source.get("fieldRef"):
                env[entry["name"]] = {"metadata.namespace": self.namespace,
                                      "status.podIP": "127.0.0.1"}[ref["fieldPath"]]
            else:
                raise AssertionError(f"unsupported env source in the chart: {entry}")
        return env

    def argv(self, container: Mapping[str, Any]) -> list[str]:
        mounts = self.mounts(container)
        argv = [self.localise(str(a), mounts) for a in [*container.get("command", []), *container.get("args", [])]]
        assert argv, f"container {container['name']} relies on the image's entrypoint"
        return argv

    def popen(self, name: str, *, init: bool = False, overrides: Mapping[str, str] | None = None,
              addresses: Mapping[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[str]:
        container = self.container(name, init=init)

        def route(text: str) -> str:
            for cluster_url, local_url in (addresses or {}).items():
                text = text.replace(cluster_url, local_url)
            return text

        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "HOME": str(self.root), "PYTHONUNBUFFERED": "1",
               **{k: route(v) for k, v in self.environment(container).items()}, **(overrides or {})}
        argv = [route(a) for a in self.argv(container)]
        found = shutil.which(argv[0], path=env["PATH"])
        assert found, f"{argv[0]} (the command of container {name}) is not installed"
        out = open(log, "w") if log else subprocess.PIPE
        return subprocess.Popen([found, *argv[1:]], env=env, cwd=self.root, text=True,
                                stdout=out, stderr=subprocess.STDOUT)

    def run(self, name: str, *, init: bool = False, overrides: Mapping[str, str] | None = None,
            addresses: Mapping[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = self.popen(name, init=init, overrides=overrides, addresses=addresses)
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
