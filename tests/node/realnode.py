"""A real Kubernetes node for tests (test tier C): the tier-C control plane plus containerd, kubelet,
kube-proxy and CoreDNS on this machine, running real pods from locally built images.

Recipe and the settings that matter: ``../shared/spec/k8s-real-node.md``; what was built and measured:
``docs/k8s-test-infra.md``. Binaries: ``$K8S_TEST_BIN_DIR`` (scripts/ensure-k8s-bins.sh) and
``$K8S_NODE_BIN_DIR`` (scripts/ensure-node-bins.sh); containerd, runc and the CNI plugins come from
Debian. Needs root: it creates a bridge, iptables rules and mounts, so everything it changes on the
host is recorded before start and undone by ``stop()``:

* pods live on the bridge ``xqk8s0`` (10.85.0.1/24, the node IP); a firewall guard drops anything
  forwarded out of any other interface, so no pod traffic leaves the machine;
* every server binds 127.0.0.1 or the bridge address; the test process talks to the cluster through
  127.0.0.1 only (the apiserver, ``kubectl port-forward``);
* a machine-wide lock serialises node runs (node name, bridge, port 53 on the bridge, kubelet's fixed
  host paths are machine-wide).

Stdlib only (like ``tests.cluster.controlplane``); by hand, kept up until Ctrl-C::

    python -m tests.node.realnode            # prints KUBECONFIG=...
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tests.cluster.controlplane import (
    Component,
    ControlPlane,
    ControlPlaneError,
    bin_dir_problem,
    free_ports,
    sign_cert,
    tail,
)

if TYPE_CHECKING:
    import kubernetes.client

REPO_ROOT = Path(__file__).resolve().parents[2]

NODE_NAME = "xqk8s-node"
BRIDGE = "xqk8s0"
GATEWAY = "10.85.0.1"
POD_CIDR = "10.85.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
LOCK_PATH = Path("/run/lock/xqueue-k8s-node.lock")
# Written while a node runs (work dir, sysctls to restore); found at the next start = that run was killed.
STATE_PATH = Path("/run/lock/xqueue-k8s-node.state")
GUARD_COMMENT = "xqueue-k8s-node-guard"
CNI_BIN_DIR = Path("/usr/lib/cni")

NODE_BINARIES = ("kubelet", "kube-proxy", "crictl", "coredns")
SYSTEM_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "ip", "iptables", "ip6tables",
                   "iptables-save", "buildah")
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
IMAGE_NAMES = ("xqueue-server", "xqueue-operator", "xqueue-grader", "xqueue-grader-demo", "postgresql", "pause")

# Host settings kubelet, kube-proxy or we change; saved before start, restored by stop().
SYSCTLS = (
    "vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",  # kubelet
    "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",                            # kubelet
    "net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables",                        # us
    "net.bridge.bridge-nf-call-ip6tables", "net.ipv4.conf.all.route_localnet",          # kube-proxy
)
# kubelet creates these iptables/ip6tables chains on every start and never removes them.
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
# Host paths kubelet, containerd and the CNI plugins use regardless of our private dirs: whatever a run
# creates below them is removed afterwards.
WATCHED_HOST_PATHS = (
    "/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd",
    "/var/lib/containerd", "/opt/containerd", "/etc/cni", "/opt/cni", "/run/netns", "/etc/kubernetes",
)
CGROUP_ROOT = Path("/sys/fs/cgroup")


class NodeError(ControlPlaneError):
    """The node could not be started (the message carries the relevant log tails)."""


@dataclass(frozen=True)
class ImageSpec:
    ref: str      # e.g. localhost/xqueue-k8s/pause:<tag>
    archive: Path  # docker-archive tarball to import into containerd


# ---------------------------------------------------------------------------------------------------
# Pure helpers: configuration files and parsers (no I/O)


def parse_image_manifest(text: str, required: Sequence[str] = IMAGE_NAMES) -> dict[str, ImageSpec]:
    """``{"name": {"ref": ..., "archive": "/abs/path.tar"}, ...}`` (scripts/build-images.sh --manifest)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NodeError(f"image manifest is not JSON ({exc}): {text[:300]!r}") from None
    if not isinstance(data, dict):
        raise NodeError(f"image manifest must be a JSON object, got {type(data).__name__}")
    images: dict[str, ImageSpec] = {}
    for name, entry in data.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("ref"), str)
                and isinstance(entry.get("archive"), str)):
            raise NodeError(f"image manifest entry {name!r} needs string fields 'ref' and 'archive': {entry!r}")
        archive = Path(entry["archive"])
        if not archive.is_absolute():
            raise NodeError(f"image manifest entry {name!r}: archive path must be absolute: {archive}")
        images[name] = ImageSpec(entry["ref"], archive)
    missing = [n for n in required if n not in images]
    if missing:
        raise NodeError(f"image manifest lacks {', '.join(missing)} (has {', '.join(images) or 'nothing'})")
    return images


def containerd_config(*, root: Path, state: Path, socket_path: Path, opt_dir: Path, runc_root: Path,
                      cni_conf_dir: Path, sandbox_image: str) -> str:
    """containerd 1.6 config (version 2): a private runtime sharing nothing with a system containerd."""
    cri = '[plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{root}"
state = "{state}"
# Snapshotters that cannot work here (or would probe the host's storage) stay off.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{socket_path}"

[ttrpc]
  address = "{socket_path}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt_dir}"

{cri}]
  # No registry here: a locally built pause image, imported before kubelet starts.
  sandbox_image = "{sandbox_image}"
  # root lacks CAP_SYS_RESOURCE on these machines: without this every sandbox fails in runc
  # ("failed to update /proc/self/oom_score_adj: Permission denied").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  # The CRI streaming server (exec, logs via kubelet) on loopback, any free port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_tls_streaming = false

{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{runc_root}"

{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf_dir}"
  max_conf_num = 1
"""


def cni_config(*, bridge: str, subnet: str, gateway: str, ipam_dir: Path) -> dict[str, Any]:
    """bridge + host-local + portmap on a bridge that already carries the gateway address."""
    return {
        "cniVersion": "0.4.0",
        "name": "xqk8s",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                # No NAT: pod traffic has nowhere to go but the bridge (the guard drops the rest).
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(*, gateway: str, port: int, healthz_port: int, ca_file: Path, tls_cert: Path,
                   tls_key: Path, runtime_socket: Path, resolv_conf: Path, pod_logs_dir: Path,
                   volume_plugin_dir: Path) -> dict[str, Any]:
    """KubeletConfiguration for one throwaway node on a shared machine (see the spec's settings table)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # 1.35+ refuses cgroup v1 unless told otherwise; these machines are cgroup v1 hybrid.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "address": gateway,  # the API server reaches it at the node's InternalIP; never on an uplink
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "imageServiceEndpoint": f"unix://{runtime_socket}",
        "clusterDNS": [gateway],
        "clusterDomain": CLUSTER_DOMAIN,
        # Pods use clusterDNS; this file only feeds host-network pods and the search path, and must
        # not hand the host's resolvers to anything.
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(pod_logs_dir),
        "volumePluginDir": str(volume_plugin_dir),
        # The disk is shared with everything else on the machine: never garbage-collect the locally
        # imported images (there is no registry to pull them again) and never evict for disk use.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%",
                         "imagefs.available": "1%", "imagefs.inodesFree": "1%"},
        "evictionPressureTransitionPeriod": "5s",
        "protectKernelDefaults": False,
        "serializeImagePulls": False,
        "maxPods": 110,
        "shutdownGracePeriod": "0s",
        "shutdownGracePeriodCriticalPods": "0s",
        # Faster pod status propagation for tests (defaults: 10 s sync).
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
    }


def kube_proxy_config(*, kubeconfig: Path, node_name: str, gateway: str, cluster_cidr: str,
                      healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node_name,
        "clusterCIDR": cluster_cidr,
        # NodePorts answer on the bridge address only, never on the machine's real interfaces or on
        # loopback (localhostNodePorts would also flip route_localnet).
        "nodePortAddresses": [f"{gateway}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "minSyncPeriod": "0s",
                     "syncPeriod": "30s"},
        # 0 = leave the kernel's conntrack settings alone (the machine is shared).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
    }


def corefile(*, gateway: str, ready_port: int, kubeconfig: Path, context: str) -> str:
    """Cluster DNS on the bridge address. The kubernetes plugin answers the cluster zones; everything
    else gets NXDOMAIN (no forward plugin: no query ever leaves the machine)."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {gateway}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} {context}
        pods insecure
        ttl 5
    }}
    cache 5
}}
.:53 {{
    bind {gateway}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def archive_identity(archive: Path) -> str:
    """What a docker-archive holds: its image config digest(s) from manifest.json (the tar's headers are
    walked, not its data: milliseconds). The archive's mtime is no identity: the image cache touches
    archives it hands out."""
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest = json.load(member)
        return ",".join(sorted(str(entry["Config"]) for entry in manifest))
    except (OSError, KeyError, ValueError, TypeError, tarfile.TarError):
        st = archive.stat()
        return f"{archive}:{st.st_size}:{st.st_mtime_ns}"


def image_list(ctr_output: str) -> dict[str, str]:
    """``ctr images list`` output -> {ref: manifest digest}."""
    images = {}
    for line in ctr_output.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            images[fields[0]] = fields[2]
    return images


def uplinks(links: Sequence[Mapping[str, Any]], bridge: str) -> list[str]:
    """Every interface (from ``ip -j link``) except loopback and our bridge: what the guard covers."""
    return sorted(str(link["ifname"]) for link in links
                  if link.get("ifname") not in (None, "lo", bridge) and link.get("link_type") != "loopback")


def unescape_mountinfo(field_text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def mounts_under(mountinfo: str, root: Path) -> list[str]:
    """Mount points at or below ``root`` in /proc/self/mountinfo text, deepest (and latest) first."""
    prefix = str(root).rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = unescape_mountinfo(fields[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    # Deepest first; among equal paths (stacked mounts) the last mounted first.
    order = {p: i for i, p in enumerate(found)}
    return sorted(found, key=lambda p: (p.count("/"), order[p]), reverse=True)


def chains_in(rules: str) -> set[str]:
    """User-defined chain names in ``iptables -S`` output."""
    return {line.split()[1] for line in rules.splitlines() if line.startswith("-N ") and len(line.split()) > 1}


def jumps_to(rules: str, chains: set[str]) -> list[list[str]]:
    """``-A`` rules (as argv after -A) in ``iptables -S`` output whose target is one of ``chains``."""
    found = []
    for line in rules.splitlines():
        if not line.startswith("-A "):
            continue
        argv = shlex.split(line)
        for i, arg in enumerate(argv[:-1]):
            if arg in ("-j", "-g", "--jump", "--goto") and argv[i + 1] in chains:
                found.append(argv[1:])
                break
    return found


def guard_rules(rules: str) -> list[list[str]]:
    """Our guard rules (argv after -A) in ``iptables -t mangle -S`` output."""
    return [shlex.split(line)[1:] for line in rules.splitlines()
            if line.startswith("-A ") and GUARD_COMMENT in line]


# ---------------------------------------------------------------------------------------------------
# Host I/O helpers


def run(argv: Sequence[str], *, timeout: float = 60.0, check: bool = True,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else None)
    if check and proc.returncode != 0:
        raise NodeError(f"{shlex.join(argv)} failed with code {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value + "\n")


def iptables_rules(binary: str, table: str) -> str:
    proc = run([binary, "-w", "5", "-t", table, "-S"], check=False, timeout=30)
    return proc.stdout if proc.returncode == 0 else ""


def nft_tables() -> set[str]:
    if not shutil.which("nft"):
        return set()
    proc = run(["nft", "list", "tables"], check=False, timeout=30)
    return {line.strip() for line in proc.stdout.splitlines() if line.startswith("table ")}


def cgroup_dirs() -> set[str]:
    """Top-level kubelet cgroups (``kubepods*``) in every mounted hierarchy."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for hierarchy in CGROUP_ROOT.iterdir():
            with contextlib.suppress(OSError):
                for entry in hierarchy.iterdir():
                    if entry.name.startswith("kubepods") and entry.is_dir():
                        found.add(str(entry))
    return found


def walk_paths(root: str, limit: int = 50_000) -> set[str]:
    """Every path at or below ``root`` (not following symlinks, not crossing mounts); bounded."""
    top = Path(root)
    if not (top.exists() or top.is_symlink()):
        return set()
    found = {root}
    if top.is_symlink() or not top.is_dir():
        return found
    device = top.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames):
            path = os.path.join(dirpath, name)
            found.add(path)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_dev != device:
                    dirnames.remove(name)  # a mount: do not descend
        found.update(os.path.join(dirpath, name) for name in filenames)
        if len(found) > limit:
            break
    return found


def delete_chains(select: Callable[[str, str, set[str]], set[str]]) -> None:
    """Delete the iptables/ip6tables chains ``select(binary, table, existing)`` picks, with every jump
    into them."""
    for binary in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            rules = iptables_rules(binary, table)
            doomed = select(binary, table, chains_in(rules))
            if not doomed:
                continue
            for rule in jumps_to(rules, doomed):
                run([binary, "-w", "5", "-t", table, "-D", *rule], check=False, timeout=30)
            for chain in doomed:
                run([binary, "-w", "5", "-t", table, "-F", chain], check=False, timeout=30)
            for chain in doomed:
                run([binary, "-w", "5", "-t", table, "-X", chain], timeout=30)


def kill_processes_mentioning(text: str, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process whose command line contains ``text`` (a unique work-dir path); bounded
    wait until they are gone. Returns their pids."""
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit() or int(proc_dir.name) == os.getpid():
            continue
        try:
            if text.encode() in (proc_dir / "cmdline").read_bytes():
                pids.append(int(proc_dir.name))
        except OSError:
            continue
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    return pids


@dataclass
class HostState:
    """What a node run may change on the host, captured before start and compared after stop."""

    sysctls: dict[str, str | None]
    chains: dict[tuple[str, str], set[str]]
    guard: dict[tuple[str, str], list[list[str]]]
    nft: set[str]
    paths: set[str]
    cgroups: set[str]
    bridge_exists: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "sysctls": self.sysctls,
            "chains": {f"{b}/{t}": sorted(c) for (b, t), c in self.chains.items()},
            "guard": {f"{b}/{t}": r for (b, t), r in self.guard.items()},
            "nft": sorted(self.nft), "paths": sorted(self.paths), "cgroups": sorted(self.cgroups),
            "bridge_exists": self.bridge_exists,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostState:
        def split(key: str) -> tuple[str, str]:
            binary, table = key.split("/", 1)
            return binary, table

        return cls(
            sysctls=dict(data["sysctls"]),
            chains={split(k): set(v) for k, v in data["chains"].items()},
            guard={split(k): list(v) for k, v in data["guard"].items()},
            nft=set(data["nft"]), paths=set(data["paths"]), cgroups=set(data["cgroups"]),
            bridge_exists=bool(data["bridge_exists"]),
        )

    @classmethod
    def capture(cls) -> HostState:
        chains: dict[tuple[str, str], set[str]] = {}
        guard: dict[tuple[str, str], list[list[str]]] = {}
        for binary in ("iptables", "ip6tables"):
            for table in IPTABLES_TABLES:
                rules = iptables_rules(binary, table)
                chains[(binary, table)] = chains_in(rules)
                guard[(binary, table)] = guard_rules(rules)
        paths: set[str] = set()
        for root in WATCHED_HOST_PATHS:
            paths |= walk_paths(root)
        return cls(
            sysctls={name: read_sysctl(name) for name in SYSCTLS},
            chains=chains,
            guard=guard,
            nft=nft_tables(),
            paths=paths,
            cgroups=cgroup_dirs(),
            bridge_exists=Path("/sys/class/net", BRIDGE).exists(),
        )

    def leftovers(self, after: HostState, work_dir: Path | None = None) -> list[str]:
        """What ``after`` has that this (pre-start) state did not: empty when teardown was complete."""
        problems = []
        for name, value in self.sysctls.items():
            if after.sysctls.get(name) != value:
                problems.append(f"sysctl {name} is {after.sysctls.get(name)!r}, was {value!r}")
        for key, names in after.chains.items():
            new = names - self.chains.get(key, set())
            if new:
                problems.append(f"{key[0]} -t {key[1]}: chains left: {', '.join(sorted(new))}")
        for key, rules in after.guard.items():
            if rules:
                problems.append(f"{key[0]} -t {key[1]}: guard rules left: {rules}")
        if after.nft - self.nft:
            problems.append(f"nft tables left: {', '.join(sorted(after.nft - self.nft))}")
        if after.paths - self.paths:
            problems.append(f"host paths left: {', '.join(sorted(after.paths - self.paths)[:20])}")
        if after.cgroups - self.cgroups:
            problems.append(f"cgroups left: {', '.join(sorted(after.cgroups - self.cgroups))}")
        if after.bridge_exists and not self.bridge_exists:
            problems.append(f"bridge {BRIDGE} still exists")
        if work_dir is not None:
            left = mounts_under(Path("/proc/self/mountinfo").read_text(), work_dir)
            if left:
                problems.append(f"mounts left under {work_dir}: {left[:10]}")
        return problems


class HostLock:
    """A machine-wide exclusive flock with a bounded wait."""

    def __init__(self, path: Path = LOCK_PATH, timeout: float = 900.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> float:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start > self.timeout:
                    holder = self.path.read_text().strip() or "unknown"
                    os.close(fd)
                    raise NodeError(f"another test node holds {self.path} (pid {holder}); gave up after "
                                    f"{self.timeout:.0f} s") from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return time.monotonic() - start

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class TcpRelay:
    """Relays connections accepted on ``listen`` to ``target`` (pods -> the loopback-only apiserver)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(listen)
        self.listener.settimeout(0.5)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="apiserver-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sockets = []
        self._thread.join(timeout=5)


def node_problem(bin_dir: str | None, node_bin_dir: str | None) -> str | None:
    """Why tier C cannot run on this machine (a human-readable reason), or None if it can."""
    if os.geteuid() != 0:
        return "tier C needs root (it creates a bridge, iptables rules and mounts)"
    missing = [c for c in SYSTEM_COMMANDS if shutil.which(c) is None]
    missing += [str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if missing:
        return (f"missing {', '.join(missing)}; install the Debian packages containerd, runc, "
                "containernetworking-plugins, buildah, iptables (make system-deps)")
    if problem := bin_dir_problem(bin_dir, "C"):
        return problem
    if not node_bin_dir:
        return ("K8S_NODE_BIN_DIR is not set; run `make node-bins` (or "
                "`export K8S_NODE_BIN_DIR=$(bash scripts/ensure-node-bins.sh --print-dir)`)")
    absent = [b for b in NODE_BINARIES if not (Path(node_bin_dir) / b).is_file()]
    if absent:
        return f"K8S_NODE_BIN_DIR={node_bin_dir} lacks {', '.join(absent)}; rebuild with `make node-bins`"
    return None


def load_image_manifest(timeout: float = 3600.0) -> dict[str, ImageSpec]:
    """The images for tier C: ``$XQK8S_IMAGE_MANIFEST`` (a JSON file) or the output of
    ``scripts/build-images.sh --manifest`` (which builds or reuses them)."""
    path = os.environ.get("XQK8S_IMAGE_MANIFEST")
    if path:
        return parse_image_manifest(Path(path).read_text())
    script = REPO_ROOT / "scripts" / "build-images.sh"
    if not script.is_file():
        raise NodeError(f"{script} does not exist and XQK8S_IMAGE_MANIFEST is not set: no images for the node")
    proc = subprocess.run(["bash", str(script), "--manifest"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise NodeError(f"scripts/build-images.sh --manifest failed with code {proc.returncode}:\n"
                        + "\n".join(proc.stderr.splitlines()[-60:]))
    return parse_image_manifest(proc.stdout)


# ---------------------------------------------------------------------------------------------------
# The node


def _sigterm_to_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class _Teardown:
    problems: list[str] = field(default_factory=list)

    def step(self, name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as exc:  # keep tearing down; report everything at the end
            self.problems.append(f"{name}: {exc}")
            print(f"realnode teardown: {name} failed: {exc}", file=sys.stderr)


class RealNode:
    """The tier-C control plane plus one real node. Use as a context manager or start()/stop().

    Attributes used by tests (keep stable): ``kubeconfig``, ``server``, ``kubectl()``, ``helm()``,
    ``api_client()``, ``images`` (name -> ref), ``node_name``, ``gateway_ip``, ``log_tails()``,
    ``port_forward()``, ``timings``, ``teardown_problems``, ``leftovers`` (after stop()).
    """

    def __init__(
        self,
        images: Mapping[str, ImageSpec],
        bin_dir: str | os.PathLike[str] | None = None,
        node_bin_dir: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        lock_timeout: float | None = None,
        node_timeout: float = 120.0,
        keep_work_dir: bool | None = None,
    ) -> None:
        resolved_bin = str(bin_dir) if bin_dir is not None else os.environ.get("K8S_TEST_BIN_DIR")
        resolved_node = str(node_bin_dir) if node_bin_dir is not None else os.environ.get("K8S_NODE_BIN_DIR")
        if problem := node_problem(resolved_bin, resolved_node):
            raise NodeError(problem)
        assert resolved_bin is not None and resolved_node is not None
        if "pause" not in images:
            raise NodeError("the images need a 'pause' entry (containerd's sandbox image)")
        self.image_specs = dict(images)
        self.bin_dir = Path(resolved_bin).resolve()
        self.node_bin_dir = Path(resolved_node).resolve()
        self.node_name = NODE_NAME
        self.gateway_ip = GATEWAY
        self.node_timeout = node_timeout
        self.lock = HostLock(timeout=lock_timeout if lock_timeout is not None
                             else float(os.environ.get("XQK8S_NODE_LOCK_TIMEOUT", "900")))
        self._own_work_dir = work_dir is None
        self.work_dir = (Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="xqueue-k8s-node-"))).resolve()
        self.keep_work_dir = (os.environ.get("K8S_TEST_KEEP_WORK_DIR") == "1"
                              if keep_work_dir is None else keep_work_dir)
        self.log_dir = self.work_dir / "logs"
        self.kubelet_root = self.work_dir / "kubelet"
        self.containerd_dir = self.work_dir / "containerd"
        self.containerd_socket = self.containerd_dir / "containerd.sock"
        self.runc_root = self.containerd_dir / "runc"
        # containerd's root (content store, unpacked snapshots, metadata) outlives the run: importing the
        # ~1.3 GB of images costs 45-55 s, a warm start skips every archive imported before. Only one node
        # runs at a time (the lock) and every run removes its sandboxes, so nothing else is shared.
        self.store_dir = Path(os.environ.get("XQK8S_NODE_STORE") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xqueue-k8s" / "node-containerd")
        self.control_plane = ControlPlane(self.bin_dir, tier="C", work_dir=self.work_dir,
                                          advertise_address=GATEWAY, keep_work_dir=True)
        self.components: list[Component] = []
        self.timings: dict[str, float] = {}
        self.teardown_problems: list[str] = []
        self.leftovers: list[str] = []
        self.before: HostState | None = None
        self._relay: TcpRelay | None = None
        self._started = False
        self._stopped = False
        self._locked = False
        self._port_forwards = 0
        self._sigterm_installed = False

    # -- attributes shared with ControlPlane ----------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def server(self) -> str:
        return self.control_plane.server

    @property
    def images(self) -> dict[str, str]:
        return {name: spec.ref for name, spec in self.image_specs.items()}

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60.0,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, check=check, timeout=timeout, input=input)

    def helm(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return self.control_plane.helm(*args, check=check, timeout=timeout)

    def api_client(self) -> kubernetes.client.ApiClient:
        return self.control_plane.api_client()

    def log_tails(self, lines: int = 200) -> str:
        return self.control_plane.log_tails(lines)

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RealNode:
        if self._started:
            return self
        self._started = True
        atexit.register(self.stop)
        # `timeout`, CI and process managers stop us with SIGTERM, whose default action skips atexit and
        # every finally: turn it into KeyboardInterrupt so the teardown runs (pytest then finishes the
        # session, tearing its fixtures down).
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)
            self._sigterm_installed = True
        t0 = time.monotonic()
        try:
            self.timings["lock-wait"] = self.lock.acquire()
            self._locked = True
            self._start()
        except BaseException as exc:
            message = f"{exc}\n\n{self.log_tails(200)}"
            # Keep the logs of a failed start for a post-mortem (not when it never got the lock).
            self.keep_work_dir = self._locked
            self.stop()
            if isinstance(exc, ControlPlaneError):
                raise NodeError(f"{message}\n(work dir kept: {self.work_dir})") from None
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start(self) -> None:
        self.work_dir.chmod(0o711)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.image_specs.values():
            if not spec.archive.is_file():
                raise NodeError(f"image archive {spec.archive} ({spec.ref}) does not exist")
        t = time.monotonic()
        self._recover_killed_run()
        self._remove_stale_state()
        self.timings["recover"] = time.monotonic() - t
        t = time.monotonic()
        self.before = HostState.capture()
        self.timings["host-snapshot"] = time.monotonic() - t
        STATE_PATH.write_text(json.dumps({"work_dir": str(self.work_dir), "pid": os.getpid(),
                                          "before": self.before.to_json()}))

        t = time.monotonic()
        self._add_guard()
        self._create_bridge()
        write_sysctl("net.ipv4.ip_forward", "1")
        # Pod -> ClusterIP -> pod on the same bridge: the reply is bridged, and only br_netfilter lets
        # conntrack undo the DNAT on it.
        if read_sysctl("net.bridge.bridge-nf-call-iptables") is None:
            run(["modprobe", "br_netfilter"], check=False)
        if read_sysctl("net.bridge.bridge-nf-call-iptables") is not None:
            write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        self.timings["host-network"] = time.monotonic() - t

        # The control plane (~6-10 s) and containerd + image import run side by side.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            cp_future = pool.submit(self.control_plane.start)
            try:
                t = time.monotonic()
                self._start_containerd()
                self.timings["containerd"] = time.monotonic() - t
                t = time.monotonic()
                self._import_images()
                self.timings["image-import"] = time.monotonic() - t
                # Sandboxes in the persistent store can only be leftovers of a killed run.
                if self._crictl("pods", "-q").stdout.split():
                    self._remove_sandboxes()
            finally:
                t = time.monotonic()
                cp_future.result(timeout=self.control_plane.apiserver_timeout + 180)
                self.timings["control-plane-wait"] = time.monotonic() - t
        self.timings.update({f"cp-{k}": v for k, v in self.control_plane.timings.items()})

        port = int(self.server.rsplit(":", 1)[1])
        # Pods reach the apiserver at the `kubernetes` Service -> GATEWAY:port (advertise address).
        self._relay = TcpRelay((GATEWAY, port), ("127.0.0.1", port))

        t = time.monotonic()
        self._start_kube_proxy()
        self._start_coredns()
        self._start_kubelet()
        self._wait_node_ready()
        self.timings["node-ready"] = time.monotonic() - t
        t = time.monotonic()
        self._wait_services()
        self.timings["dns+proxy-ready"] = time.monotonic() - t

    # -- start steps ---------------------------------------------------------------------------

    def _recover_killed_run(self) -> None:
        """Undo what a run killed before its teardown left (we hold the lock, so it is not running):
        its processes (all name its work dir), containers, mounts, chains, cgroups and sysctls."""
        try:
            state = json.loads(STATE_PATH.read_text())
        except FileNotFoundError:
            return
        except ValueError:
            state = {}
        print(f"realnode: cleaning up after a killed node run (work dir {state.get('work_dir')}, pid "
              f"{state.get('pid')})", file=sys.stderr)
        old = Path(str(state.get("work_dir") or "/"))
        if old.is_absolute() and len(old.parts) >= 3:
            runc_root = old / "containerd" / "runc"
            if runc_root.is_dir():
                for ns_root in runc_root.iterdir():
                    for cid in run(["runc", "--root", str(ns_root), "list", "-q"], check=False).stdout.split():
                        run(["runc", "--root", str(ns_root), "delete", "--force", cid], check=False)
            kill_processes_mentioning(f"{old}/")
            with contextlib.suppress(NodeError):
                self._unmount_under(old)
            # The killed shims' sockets: containerd 1.6 names them sha256("<grpc address>/<ns>/<task id>").
            tasks = old / "containerd" / "state" / "io.containerd.runtime.v2.task"
            for task in tasks.glob("*/*"):
                address = f"{old / 'containerd' / 'containerd.sock'}/{task.parent.name}/{task.name}"
                Path("/run/containerd/s", hashlib.sha256(address.encode()).hexdigest()).unlink(missing_ok=True)
        run([str(self.node_bin_dir / "kube-proxy"), "--cleanup"], check=False)
        try:
            before = HostState.from_json(state["before"])
        except (KeyError, TypeError, ValueError):
            before = None
        if before is not None:
            # The same steps as a normal teardown, against the state recorded before the killed run.
            for step in (lambda: self._delete_chains(before), self._remove_guard,
                         lambda: self._delete_new_nft_tables(before), lambda: self._remove_new_paths(before),
                         lambda: self._remove_new_cgroups(before), lambda: self._restore_sysctls(before)):
                try:
                    step()
                except Exception as exc:
                    print(f"realnode: cleaning up after a killed run: {exc}", file=sys.stderr)
        else:  # no record: remove what only a node creates
            delete_chains(lambda _binary, _table, existing: {
                c for c in existing if c in KUBELET_CHAINS or c.startswith(("KUBE-", "CNI-"))})
        if old.is_absolute() and len(old.parts) >= 3 and old.name.startswith("xqueue-k8s-node-"):
            shutil.rmtree(old, ignore_errors=True)
        STATE_PATH.unlink(missing_ok=True)

    def _remove_stale_state(self) -> None:
        """We hold the lock, so a bridge or guard rules of ours are leftovers of a killed run."""
        if Path("/sys/class/net", BRIDGE).exists():
            run(["ip", "link", "delete", BRIDGE], check=False)
        for binary in ("iptables", "ip6tables"):
            for rule in guard_rules(iptables_rules(binary, "mangle")):
                run([binary, "-w", "5", "-t", "mangle", "-D", *rule], check=False)

    def _add_guard(self) -> None:
        links = json.loads(run(["ip", "-j", "link", "show"]).stdout)
        for name in uplinks(links, BRIDGE):
            for binary in ("iptables", "ip6tables"):
                run([binary, "-w", "5", "-t", "mangle", "-I", "FORWARD", "-o", name,
                     "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP"])

    def _create_bridge(self) -> None:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run(["ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Component:
        component = Component(name, list(argv), self.log_dir / f"{name}.log")
        base = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        component.start({**base, **(env or {})})
        self.components.append(component)
        return component

    def _dead(self, *components: Component) -> Callable[[], str | None]:
        def check() -> str | None:
            for c in components:
                if not c.running():
                    code = c.proc.returncode if c.proc else None
                    return f"{c.name} exited with code {code} (log: {c.log_path})"
            return None
        return check

    def _wait(self, what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25,
              alive: Callable[[], str | None] | None = None) -> float:
        start = time.monotonic()
        last: BaseException | None = None
        while True:
            if alive is not None and (reason := alive()):
                raise NodeError(f"{what}: {reason}")
            try:
                if check():
                    return time.monotonic() - start
            except Exception as exc:
                last = exc
            if time.monotonic() - start > timeout:
                raise NodeError(f"timed out after {timeout:.0f} s waiting for {what}"
                                + (f" (last error: {last!r})" if last else ""))
            time.sleep(interval)

    def _start_containerd(self) -> None:
        d = self.containerd_dir
        cni_conf = d / "cni" / "net.d"
        for sub in ("state", "opt", "runc", "cni/net.d", "cni/ipam"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (self.store_dir / "root").mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-xqk8s.conflist").write_text(json.dumps(
            cni_config(bridge=BRIDGE, subnet=POD_CIDR, gateway=GATEWAY, ipam_dir=d / "cni" / "ipam"), indent=2))
        config = d / "config.toml"
        config.write_text(containerd_config(
            root=self.store_dir / "root", state=d / "state", socket_path=self.containerd_socket, opt_dir=d / "opt",
            runc_root=self.runc_root, cni_conf_dir=cni_conf, sandbox_image=self.image_specs["pause"].ref))
        containerd = self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd socket", lambda: self._ctr("version", check=False).returncode == 0,
                   30, alive=self._dead(containerd))

    def _ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
                   check=check, timeout=timeout)

    def _import_images(self) -> None:
        """Import the archives whose refs the persistent store lacks (or got from another archive),
        then drop every other image so the store holds exactly the current set."""
        markers_path = self.store_dir / "imported.json"
        try:
            markers: dict[str, str] = json.loads(markers_path.read_text())
        except (OSError, ValueError):
            markers = {}
        listing = image_list(self._ctr("images", "list").stdout)
        present = set(listing)
        wanted = {spec.ref: spec for spec in self.image_specs.values()}

        def identity(spec: ImageSpec) -> str:
            return archive_identity(spec.archive)

        # CRI adds sha256:<id> and digest references to each image: keep those of wanted images.
        keep = {listing[ref] for ref in wanted if ref in listing}
        stale = sorted(ref for ref, digest in listing.items() if ref not in wanted and digest not in keep)
        if stale:
            self._ctr("images", "remove", "--sync", *stale, timeout=300)
        for ref in stale:
            markers.pop(ref, None)
        todo = [spec for ref, spec in wanted.items() if ref not in present or markers.get(ref) != identity(spec)]
        self.timings["images-imported"] = float(len(todo))
        archives = sorted({spec.archive for spec in todo})
        # Side by side: hashing, writing and unpacking overlap across archives (~1.3 GB in total).
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            for done in pool.map(lambda a: self._ctr("images", "import", "--snapshotter", "overlayfs", str(a),
                                                     timeout=600), archives):
                del done
        markers.update({spec.ref: identity(spec) for spec in todo})
        tmp = markers_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(markers, indent=1, sort_keys=True))
        tmp.replace(markers_path)
        present = set(self._ctr("images", "list", "-q").stdout.split())
        missing = [f"{name} ({spec.ref})" for name, spec in self.image_specs.items() if spec.ref not in present]
        if missing:
            raise NodeError(f"after importing the archives containerd lacks {', '.join(missing)}; "
                            f"it has {sorted(present)}")

    def _node_kubeconfig(self, name: str, cert: Path, key: Path) -> Path:
        """A kubeconfig for a node component with its own client certificate (loopback apiserver)."""
        path = self.work_dir / f"{name}.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "xqueue-test", "cluster": {
                "server": self.server, "certificate-authority": str(self.control_plane.pki_dir / "ca.crt")}}],
            "users": [{"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "xqueue-test", "context": {"cluster": "xqueue-test", "user": name}}],
            "current-context": "xqueue-test",
        }, indent=2))
        path.chmod(0o600)
        return path

    def _start_kube_proxy(self) -> None:
        pki = self.control_plane.pki_dir
        # system:kube-proxy is bound to system:node-proxier by RBAC's bootstrap policy.
        cert, key = sign_cert(pki, "kube-proxy", "/CN=system:kube-proxy", client=True)
        healthz, metrics = free_ports(2)
        self._proxy_healthz = healthz
        config = self.work_dir / "kube-proxy.json"
        config.write_text(json.dumps(kube_proxy_config(
            kubeconfig=self._node_kubeconfig("kube-proxy", cert, key), node_name=NODE_NAME, gateway=GATEWAY,
            cluster_cidr=POD_CIDR, healthz_port=healthz, metrics_port=metrics), indent=2))
        self._spawn("kube-proxy", [str(self.node_bin_dir / "kube-proxy"), f"--config={config}", "--v=1"])

    def _start_coredns(self) -> None:
        (ready,) = free_ports(1)
        self._coredns_ready = ready
        conf = self.work_dir / "Corefile"
        conf.write_text(corefile(gateway=GATEWAY, ready_port=ready, kubeconfig=self.kubeconfig,
                                 context="xqueue-test"))
        self._spawn("coredns", [str(self.node_bin_dir / "coredns"), "-conf", str(conf)])

    def _start_kubelet(self) -> None:
        pki = self.control_plane.pki_dir
        # Node authorizer identity: group system:nodes, user system:node:<name>.
        cert, key = sign_cert(pki, "kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", client=True)
        serving_cert, serving_key = sign_cert(pki, "kubelet-serving", f"/CN={NODE_NAME}", server_ips=[GATEWAY])
        with socket.create_server((GATEWAY, 0)) as s1, socket.create_server(("127.0.0.1", 0)) as s2:
            port, healthz = s1.getsockname()[1], s2.getsockname()[1]
        self._kubelet_healthz = healthz
        resolv = self.work_dir / "resolv.conf"
        # Only host-network pods (dnsPolicy Default) would use it; nothing may leave the machine.
        resolv.write_text("nameserver 127.0.0.1\n")
        for sub in ("pod-logs", "volume-plugins"):
            (self.work_dir / sub).mkdir(exist_ok=True)
        self.kubelet_root.mkdir(exist_ok=True)
        config = self.work_dir / "kubelet.json"
        config.write_text(json.dumps(kubelet_config(
            gateway=GATEWAY, port=port, healthz_port=healthz, ca_file=pki / "ca.crt", tls_cert=serving_cert,
            tls_key=serving_key, runtime_socket=self.containerd_socket, resolv_conf=resolv,
            pod_logs_dir=self.work_dir / "pod-logs", volume_plugin_dir=self.work_dir / "volume-plugins"),
            indent=2))
        self._spawn("kubelet", [
            str(self.node_bin_dir / "kubelet"),
            f"--config={config}",
            f"--kubeconfig={self._node_kubeconfig('kubelet', cert, key)}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={GATEWAY}",
            f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.work_dir / 'kubelet-pki'}",
            "--v=1",
        ])

    def _node_ready(self) -> bool:
        proc = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False, timeout=10)
        if proc.returncode != 0:
            return False
        node = json.loads(proc.stdout)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in node.get("status", {}).get("conditions", []))
        taints = [t for t in node.get("spec", {}).get("taints", []) if t.get("effect") in ("NoSchedule", "NoExecute")]
        return ready and not taints

    def _wait_node_ready(self) -> None:
        self._wait(f"node {NODE_NAME} Ready and untainted (kubelet + containerd + controller-manager)",
                   self._node_ready, self.node_timeout, interval=0.5,
                   alive=self._dead(*self.components, *self.control_plane.components))

    def _http_ok(self, port: int, path: str) -> bool:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return int(resp.status) == 200

    def _wait_services(self) -> None:
        alive = self._dead(*self.components)
        self._wait("CoreDNS ready (kubernetes plugin synced)", lambda: self._http_ok(self._coredns_ready, "/ready"),
                   60, alive=alive)
        self._wait("kube-proxy healthz", lambda: self._http_ok(self._proxy_healthz, "/healthz"), 60, alive=alive)

    # -- teardown ------------------------------------------------------------------------------

    def _component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def stop(self) -> None:
        """Undo everything start() did, in dependency order; idempotent, robust to a partial start.
        Problems are collected in ``teardown_problems``; what the host still has that it did not have
        before start is in ``leftovers``."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        if not self._locked:
            # Never got the lock: nothing on the host is ours (the bridge and rules there belong to the
            # node that holds it), so only our own files go.
            self._release_process_hooks()
            if self._own_work_dir and not self.keep_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            return
        t0 = time.monotonic()
        td = _Teardown()
        kubelet = self._component("kubelet")
        if kubelet is not None:
            td.step("stop kubelet", lambda: kubelet.stop(grace=10.0))
        containerd = self._component("containerd")
        if containerd is not None and containerd.running():
            td.step("remove pod sandboxes", self._remove_sandboxes)
        td.step("unmount kubelet root", lambda: self._unmount_under(self.kubelet_root))
        proxy = self._component("kube-proxy")
        if proxy is not None:
            td.step("stop kube-proxy", lambda: proxy.stop(grace=10.0))
            td.step("kube-proxy --cleanup", lambda: run(
                [str(self.node_bin_dir / "kube-proxy"), "--cleanup"], timeout=60))
        coredns = self._component("coredns")
        if coredns is not None:
            td.step("stop coredns", lambda: coredns.stop(grace=10.0))
        if self._relay is not None:
            td.step("stop apiserver relay", self._relay.stop)
        if containerd is not None:
            td.step("stop containerd", lambda: containerd.stop(grace=15.0))
            td.step("stop containerd shims and containers", self._kill_shims)
        td.step("unmount containerd state", lambda: self._unmount_under(self.containerd_dir))
        if self.before is not None:
            before = self.before
            td.step("delete kubelet iptables chains", lambda: self._delete_chains(before))
        td.step("remove guard rules", self._remove_guard)
        if self.before is not None:
            before = self.before
            td.step("delete nft tables created by iptables", lambda: self._delete_new_nft_tables(before))
        if Path("/sys/class/net", BRIDGE).exists() and (self.before is None or not self.before.bridge_exists):
            td.step("delete bridge", lambda: run(["ip", "link", "delete", BRIDGE]))
        if self.before is not None:
            before = self.before
            td.step("remove host paths", lambda: self._remove_new_paths(before))
            td.step("remove kubepods cgroups", lambda: self._remove_new_cgroups(before))
            td.step("restore sysctls", lambda: self._restore_sysctls(before))
        td.step("stop control plane", self.control_plane.stop)
        td.step("unmount work dir", lambda: self._unmount_under(self.work_dir))
        self.components = []
        self.timings["teardown"] = time.monotonic() - t0
        if self.before is not None:
            try:
                self.leftovers = self.before.leftovers(HostState.capture(), self.work_dir)
            except Exception as exc:
                td.problems.append(f"checking leftovers: {exc}")
        self.teardown_problems = td.problems
        if self._locked:
            if not td.problems:  # else the next start retries the cleanup (see _recover_killed_run)
                STATE_PATH.unlink(missing_ok=True)
            self.lock.release()
            self._locked = False
        self._release_process_hooks()
        if self._own_work_dir and not self.keep_work_dir and not self.leftovers and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _release_process_hooks(self) -> None:
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._sigterm_installed = False

    def _crictl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.containerd_socket}"
        return run([str(self.node_bin_dir / "crictl"), "--runtime-endpoint", endpoint, "--image-endpoint", endpoint,
                    "--timeout", "30s", *args], timeout=timeout, check=check)

    def _remove_sandboxes(self) -> None:
        self._crictl("rmp", "--all", "--force", timeout=120)

    def _unmount_under(self, root: Path) -> None:
        for _ in range(3):  # a lazy unmount can reveal mounts underneath; bounded
            points = mounts_under(Path("/proc/self/mountinfo").read_text(), root)
            if not points:
                return
            for point in points:
                if run(["umount", point], check=False, timeout=30).returncode != 0:
                    run(["umount", "-l", point], check=False, timeout=30)
        left = mounts_under(Path("/proc/self/mountinfo").read_text(), root)
        if left:
            raise NodeError(f"could not unmount {left[:5]}")

    def _kill_shims(self) -> None:
        """Shims outlive containerd by design; ours name our socket on their command line."""
        address = str(self.containerd_socket)
        pids = []
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            try:
                argv = (proc_dir / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
                pids.append(int(proc_dir.name))
        # Containers a shim still holds (only if sandbox removal failed): delete them through runc first.
        if self.runc_root.is_dir():
            for ns_root in self.runc_root.iterdir():
                listing = run(["runc", "--root", str(ns_root), "list", "-q"], check=False, timeout=30)
                for cid in listing.stdout.split():
                    run(["runc", "--root", str(ns_root), "delete", "--force", cid], check=False, timeout=30)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _delete_chains(self, before: HostState) -> None:
        # kubelet's chains, plus any other KUBE-/CNI- chain this run created (kube-proxy's cleanup and
        # portmap normally remove their own).
        delete_chains(lambda binary, table, existing: {
            c for c in existing - before.chains.get((binary, table), set())
            if c in KUBELET_CHAINS or c.startswith(("KUBE-", "CNI-"))})

    def _delete_new_nft_tables(self, before: HostState) -> None:
        """iptables-nft creates the nft tables on first use; drop the ones that are new and empty."""
        for table in sorted(nft_tables() - before.nft):
            family_name = table.split()[1:]
            listing = run(["nft", "-j", "list", "table", *family_name], check=False, timeout=30)
            if listing.returncode != 0:
                continue
            items = json.loads(listing.stdout).get("nftables", [])
            if any("rule" in item for item in items):
                continue  # someone else's rules: not ours to delete
            run(["nft", "delete", "table", *family_name], timeout=30)

    def _remove_guard(self) -> None:
        for binary in ("iptables", "ip6tables"):
            for rule in guard_rules(iptables_rules(binary, "mangle")):
                run([binary, "-w", "5", "-t", "mangle", "-D", *rule], timeout=30)

    def _remove_new_paths(self, before: HostState) -> None:
        now: set[str] = set()
        for root in WATCHED_HOST_PATHS:
            now |= walk_paths(root)
        for path in sorted(now - before.paths, key=lambda p: p.count("/"), reverse=True):
            p = Path(path)
            if p.is_symlink() or not p.is_dir():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p)

    def _remove_new_cgroups(self, before: HostState) -> None:
        for top in sorted(cgroup_dirs() - before.cgroups):
            for dirpath, _dirs, _files in os.walk(top, topdown=False):
                os.rmdir(dirpath)

    def _restore_sysctls(self, before: HostState) -> None:
        for name, value in before.sysctls.items():
            if value is not None and read_sysctl(name) != value:
                write_sysctl(name, value)

    # -- helpers for tests ---------------------------------------------------------------------

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, remote_port: int,
                     timeout: float = 30.0) -> Iterator[int]:
        """``kubectl port-forward`` to ``target`` (pod/NAME, svc/NAME, deploy/NAME) on a free
        127.0.0.1 port, which is yielded once kubectl reports it is listening (bounded wait)."""
        self._port_forwards += 1
        log_path = self.log_dir / f"port-forward-{self._port_forwards}.log"
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", "-n", namespace,
                "port-forward", "--address=127.0.0.1", target, f":{remote_port}"]
        with log_path.open("ab") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    text=True, start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stdout: IO[str] = proc.stdout

        def pump() -> None:  # keeps draining so kubectl never blocks on a full pipe
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        try:
            deadline = time.monotonic() + timeout
            port = None
            while port is None:
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    if proc.poll() is not None:
                        raise NodeError(f"kubectl port-forward {target} exited with code {proc.returncode}: "
                                        f"{tail(log_path, 20)}") from None
                    if time.monotonic() > deadline:
                        raise NodeError(f"kubectl port-forward {target}: no local port after {timeout:.0f} s: "
                                        f"{tail(log_path, 20)}") from None
                    continue
                if m := re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> ", line):
                    port = int(m.group(1))
            yield port
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the tier-C cluster by hand and keep it until Ctrl-C: ``python -m tests.node.realnode``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--once", action="store_true", help="start, print timings, stop, report leftovers")
    opts = parser.parse_args(argv)
    images = load_image_manifest()
    node = RealNode(images)
    try:
        node.start()
        print(f"KUBECONFIG={node.kubeconfig}\nserver={node.server}\nnode={node.node_name} ({node.gateway_ip})"
              f"\nlogs={node.log_dir}")
        print("images: " + ", ".join(f"{k}={v}" for k, v in node.images.items()))
        print("timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in node.timings.items()), flush=True)
        if not opts.once:
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        node.stop()
        print(f"teardown: {node.timings.get('teardown', 0):.1f}s; problems: {node.teardown_problems or 'none'}; "
              f"leftovers: {node.leftovers or 'none'}", flush=True)
    return 1 if node.teardown_problems or node.leftovers else 0


if __name__ == "__main__":
    raise SystemExit(main())
