"""Small kubectl-level operations the tier-C tests share: apply, wait (bounded), exec, host pids.

Everything goes through ``RealNode.kubectl`` (the apiserver on 127.0.0.1) except ``container_host_pids``,
which reads /proc of this machine: the node runs here, so a container's processes are host processes,
found by the container id in their cgroup path (no crictl, no node agent).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cluster(Protocol):
    """What these helpers need of tests.node.realnode.RealNode."""

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60.0,
                input: str | None = None) -> Any: ...


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5,
             detail: Callable[[], str] | None = None) -> T:
    """Poll ``probe`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def apply(cluster: Cluster, objects: Iterable[dict[str, Any]]) -> None:
    body = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    out = cluster.kubectl("get", *args, "-o", "json")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "pods", "-n", namespace, "-l", selector)["items"]
    return items


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            return dict(status)
    return {}


def is_ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def wait_started(cluster: Cluster, namespace: str, pod: str, container: str, timeout: float = 120) -> dict[str, Any]:
    """The pod once ``container`` runs and has passed its startup probe (if any)."""
    def probe() -> dict[str, Any] | None:
        body = get_json(cluster, "pod", "-n", namespace, pod)
        status = container_status(body, container)
        if status.get("state", {}).get("terminated"):
            raise AssertionError(f"{pod}/{container} terminated: {status['state']['terminated']}")
        return body if status.get("started") and status.get("state", {}).get("running") else None

    return wait_for(f"{namespace}/{pod} container {container} started", probe, timeout,
                    detail=lambda: describe(cluster, namespace, pod))


def describe(cluster: Cluster, namespace: str, pod: str) -> str:
    out = cluster.kubectl("describe", "pod", "-n", namespace, pod, check=False)
    return str(out.stdout)[-3000:] + str(out.stderr)[-500:]


def logs(cluster: Cluster, namespace: str, pod: str, container: str, previous: bool = False) -> str:
    """The container's log (last 500 lines); "" when there is none (yet, or any more)."""
    args = ["logs", "-n", namespace, pod, "-c", container, "--tail=500"]
    if previous:
        args.append("--previous")
    out = cluster.kubectl(*args, check=False)
    return str(out.stdout) if out.returncode == 0 else ""


def container_id(pod: dict[str, Any], container: str) -> str:
    """The runtime's id of a running container (``containerd://<id>`` in the pod status)."""
    raw = str(container_status(pod, container).get("containerID") or "")
    _, _, cid = raw.partition("://")
    if not cid:
        raise AssertionError(f"{pod['metadata']['name']}/{container} has no container id yet")
    return cid


def container_host_pids(cid: str, proc: Path = Path("/proc")) -> list[int]:
    """Host pids of every process in the container (its cgroup path ends in the container id)."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        if any(line.rstrip().endswith(cid) or f"/{cid}/" in line or f"-{cid}.scope" in line
               for line in cgroups.splitlines()):
            found.append(int(entry.name))
    return sorted(found)


def kill_container_hard(cid: str) -> list[int]:
    """SIGKILL every process of the container at once, from the host: no signal handler runs, nothing
    drains (what a node losing a process looks like). Returns the pids killed."""
    targets = container_host_pids(cid)
    if not targets:
        raise AssertionError(f"no host process belongs to container {cid}")
    for pid in targets:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return targets
