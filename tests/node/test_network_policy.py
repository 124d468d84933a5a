"""NetworkPolicy on the real node (tier C).

The node's bridge CNI enforces nothing, so an enforcer has to run next to it.

* `sigs.k8s.io/kube-network-policies` (kind's enforcer) cannot work on this machine: it sends the
  first packet of each connection to user space with an nftables `queue` rule, and the kernel is built
  without CONFIG_NFT_QUEUE (nfnetlink_queue itself is there). `nft` answers "Could not process rule:
  No such file or directory"; kube-network-policies v0.8.0, run for real against this cluster
  (XQK8S_KNP_BINARY), syncs its informers, logs `"syncing nftables rules" error=<conn.Receive:
  netlink receive: no such file or directory>` and installs nothing.
* kube-router's NetworkPolicy controller (github.com/cloudnativelabs/kube-router/v2 v2.1.0 from the
  module proxy, iptables + ipset, which this kernel has) does work: run as a host process with only
  `--run-firewall` (XQK8S_KUBE_ROUTER_BINARY; needs the `ipset` command), it enforces the chart's and
  the operator's policies, and `test_policies_are_enforced` checks live connections from real pods.
  Its iptables chains and ipsets are removed afterwards. Without the binary the test skips, naming why.

Checked regardless, on the real objects and pods: the chart's and the operator's NetworkPolicies
exist, each selects exactly the pods it is meant for, and - evaluated with the NetworkPolicy rules
(tests/node/netpol.py) against the live pods' labels and addresses - a grader pod may reach the XQueue
server and DNS, but not PostgreSQL, the API server or the LMS, and PostgreSQL admits only the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coursegrader_operator import constants as C
from tests.node.faults import SERVER_PORT, Release
from tests.node.netpol import Endpoint, connection_allowed, pod_endpoint, policies_selecting
from tests.node.podops import get_json, pods

pytestmark = [pytest.mark.node, pytest.mark.slow, pytest.mark.timeout(600)]

KNP_TABLE = "kube-network-policies"
SYNC_ERROR = 'syncing nftables rules" error'  # its log line when the kernel refuses the rule set


def knp_binary() -> Path | None:
    """The enforcer binary: XQK8S_KNP_BINARY, else one in K8S_NODE_BIN_DIR (not built by default: see
    scripts/ensure-node-bins.sh)."""
    for candidate in (os.environ.get("XQK8S_KNP_BINARY"),
                      str(Path(os.environ.get("K8S_NODE_BIN_DIR") or "/nonexistent") / "kube-network-policies")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def nft_tables() -> str:
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10).stdout


def kernel_nft_queue() -> str | None:
    """None when the kernel takes an nftables `queue` rule (tried in a scratch table, removed right
    after), else nft's error."""
    table = "xqk8s-queue-probe"
    script = (f"add table inet {table}\n"
              f"add chain inet {table} c {{ type filter hook forward priority 0; policy accept; }}\n"
              f"add rule inet {table} c ip daddr 192.0.2.1 queue num 100 bypass\n")
    out = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, timeout=10, check=False)
    return None if out.returncode == 0 else " ".join(out.stderr.split())[:300]


# kube-network-policies has no kubeconfig flag: it only reads the in-cluster configuration (the
# KUBERNETES_SERVICE_* variables and a ServiceAccount token at a fixed path). As a host process it
# therefore runs in a private mount namespace with a tmpfs on /run holding that token: nothing on the
# host changes, and the API server is reached at 127.0.0.1.
ENFORCER_SHELL = (
    'mount -t tmpfs -o size=1m,mode=0755 tmpfs /run && d=/run/secrets/kubernetes.io/serviceaccount && '
    'mkdir -p "$d" && cp "$SA_DIR/token" "$SA_DIR/ca.crt" "$SA_DIR/namespace" "$d/" && exec "$@"')


def enforcer_identity(cluster: Any, work: Path) -> Path:
    """A ServiceAccount for the enforcer (cluster-admin: a test cluster) and its files."""
    rbac = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "kube-network-policies", "namespace": "kube-system"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "xqk8s-kube-network-policies"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
         "subjects": [{"kind": "ServiceAccount", "name": "kube-network-policies", "namespace": "kube-system"}]}]}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(rbac))
    token = cluster.kubectl("create", "token", "kube-network-policies", "-n", "kube-system",
                            "--duration=1h").stdout.strip()
    sa_dir = work / "enforcer-sa"
    sa_dir.mkdir(mode=0o700, exist_ok=True)
    (sa_dir / "token").write_text(token)
    (sa_dir / "namespace").write_text("kube-system")
    (sa_dir / "ca.crt").write_bytes((cluster.control_plane.pki_dir / "ca.crt").read_bytes())
    return sa_dir


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s: an enforcer that hangs must not hang the test run."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_enforcer(cluster: Any, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """kube-network-policies as a host process next to the node; its nftables table is removed after."""
    binary = knp_binary()
    assert binary is not None
    sa_dir = enforcer_identity(cluster, log_path.parent)
    host, _, port = cluster.server.removeprefix("https://").rpartition(":")
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", ENFORCER_SHELL, "enforcer",
            str(binary), f"--hostname-override={cluster.node_name}", "--disable-nri",
            "--metrics-bind-address=127.0.0.1:19080", "--v=2"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SA_DIR": str(sa_dir),
                       "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)
        if KNP_TABLE in nft_tables():
            subprocess.run(["nft", "delete", "table", "inet", KNP_TABLE], timeout=10, check=False)
        cluster.kubectl("delete", "clusterrolebinding", "xqk8s-kube-network-policies", "--ignore-not-found",
                        check=False)


def enforcement_problem(cluster: Any, work: Path) -> str | None:
    """Why kube-network-policies cannot enforce here, or None once it runs with its rules loaded.

    With the binary at hand it is run for real and its own error is reported with the kernel's;
    without it, the kernel's answer to a `queue` rule decides (every rule set it loads has one)."""
    nft_error = kernel_nft_queue()
    kernel = ("the kernel refuses nftables `queue` rules (CONFIG_NFT_QUEUE is not set), which every rule "
              f"set of kube-network-policies contains; nft: {nft_error}") if nft_error else ""
    if knp_binary() is None:
        return kernel or "kube-network-policies is not built (set XQK8S_KNP_BINARY; ensure-node-bins.sh skips it)"
    log_path = work / "kube-network-policies.log"
    with running_enforcer(cluster, log_path) as proc:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if KNP_TABLE in nft_tables() and "queue" in _table_rules():
                return None
            if proc.poll() is not None or SYNC_ERROR in log_path.read_text(errors="replace"):
                break
            time.sleep(0.5)
    lines = log_path.read_text(errors="replace").splitlines()
    errors = [" ".join(lines[i:i + 2]) for i, line in enumerate(lines) if SYNC_ERROR in line or "panic" in line]
    return "; ".join(filter(None, [f"kube-network-policies could not load its nftables rules: "
                                   f"{' | '.join(errors[:2])[:800] or lines[-1:]}", kernel]))


def _table_rules() -> str:
    out = subprocess.run(["nft", "list", "table", "inet", KNP_TABLE], capture_output=True, text=True, timeout=10)
    return out.stdout


# -- kube-router: iptables + ipset, which this kernel has -------------------------------------------

KUBE_ROUTER_CHAINS = ("KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-")


def kube_router_binary() -> Path | None:
    """XQK8S_KUBE_ROUTER_BINARY, else kube-router in K8S_NODE_BIN_DIR; it also needs `ipset`."""
    for candidate in (os.environ.get("XQK8S_KUBE_ROUTER_BINARY"),
                      str(Path(os.environ.get("K8S_NODE_BIN_DIR") or "/nonexistent") / "kube-router")):
        if candidate and Path(candidate).is_file() and shutil.which("ipset"):
            return Path(candidate)
    return None


def _ipsets() -> set[str]:
    out = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, timeout=10)
    return set(out.stdout.split())


def _kube_router_rules() -> list[list[str]]:
    """kube-router's jumps from the built-in chains (to delete) and its own chains (to flush and remove)."""
    dump = subprocess.run(["iptables-save", "-t", "filter"], capture_output=True, text=True, timeout=10).stdout
    jumps = [shlex.split(line)[1:] for line in dump.splitlines()
             if line.startswith(("-A INPUT ", "-A FORWARD ", "-A OUTPUT ")) and "-j KUBE-ROUTER-" in line]
    chains = [line[1:].split()[0] for line in dump.splitlines()
              if line.startswith(":") and line[1:].startswith(KUBE_ROUTER_CHAINS)]
    return [["-D", *rule[1:]] if rule[0] == "-A" else rule for rule in jumps] + \
        [["-F", c] for c in chains] + [["-X", c] for c in chains]


@contextlib.contextmanager
def running_kube_router(cluster: Any, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """kube-router's NetworkPolicy controller alone (no routing, no service proxy, no CNI) next to the
    node, until its rules are in place; afterwards its iptables chains and ipsets are removed again."""
    binary = kube_router_binary()
    assert binary is not None
    sets_before = _ipsets()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(binary), f"--kubeconfig={cluster.kubeconfig}", f"--hostname-override={cluster.node_name}",
             "--run-firewall=true", "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
             "--health-port=0", "--metrics-port=0", "--iptables-sync-period=1m"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not any(r[:2] == ["-X", "KUBE-ROUTER-FORWARD"] for r in _kube_router_rules()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"kube-router did not set up its rules: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(2)  # the per-policy chains follow the first full sync
        yield proc
    finally:
        stop_process(proc)
        for rule in _kube_router_rules():
            subprocess.run(["iptables", "-t", "filter", *rule], capture_output=True, timeout=10, check=False)
        for name in _ipsets() - sets_before:
            subprocess.run(["ipset", "destroy", name], capture_output=True, timeout=10, check=False)


@pytest.fixture(scope="module")
def release(real_cluster: Any) -> Iterator[Release]:
    from tests.node.system import installed_release

    # The chart's own policies on; DNS on this node is CoreDNS on the host (not a pod), so the
    # graders' DNS rule is "port 53, any address" (clusterDNS.podLabels unset), as on clusters with
    # node-local DNS.
    with installed_release(real_cluster, network_policy=True) as rel:
        yield rel


def live_state(release: Release) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]], list[dict[str, Any]]]:
    policies = get_json(release.cluster, "networkpolicies", "-A")["items"]
    namespaces = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {})
                  for n in get_json(release.cluster, "namespaces")["items"]}
    all_pods = [p for p in get_json(release.cluster, "pods", "-A")["items"]
                if (p.get("status") or {}).get("phase") == "Running"]
    return policies, namespaces, all_pods


def component_pods(all_pods: list[dict[str, Any]], namespace: str, component: str) -> list[Endpoint]:
    return [pod_endpoint(p) for p in all_pods if p["metadata"]["namespace"] == namespace
            and (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == component]


def test_policies_exist_and_select_the_right_pods(release: Release) -> None:
    cg, queue = "fenced", "fenced-course"
    release.apply_coursegrader(cg, queue, slots=1, scaling={"minReplicas": 1, "maxReplicas": 1})
    try:
        release.wait_graders_ready(cg, 1)
        policies, namespaces, all_pods = live_state(release)
    finally:
        release.delete_coursegrader(cg)
    ns, prefix = release.namespace, release.fullname
    by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in policies}
    for name in (f"{cg}-grader", f"{prefix}-server", f"{prefix}-postgresql", f"{prefix}-operator",
                 f"{prefix}-admin-account"):
        assert (ns, name) in by_name, f"NetworkPolicy {name} missing: {sorted(by_name)}"

    (grader,) = [pod_endpoint(p) for p in all_pods
                 if (p["metadata"].get("labels") or {}).get(C.LABEL_OWNER) == cg]
    servers = component_pods(all_pods, ns, "server")
    (database,) = component_pods(all_pods, ns, "postgresql")
    (operator,) = component_pods(all_pods, ns, "operator")
    lms = [pod_endpoint(p) for p in all_pods if (p["metadata"].get("labels") or {}).get(
        "app.kubernetes.io/name") == "lms-simulator"]
    assert len(servers) == 2 and lms

    # Each policy selects exactly the pods it is written for.
    def selected(name: str, direction: str) -> list[str]:
        return sorted(e.name for e in [grader, *servers, database, operator, *lms]
                      if name in policies_selecting(policies, e, direction))

    assert selected(f"{cg}-grader", "Egress") == [grader.name]
    assert selected(f"{prefix}-server", "Ingress") == sorted(s.name for s in servers)
    assert selected(f"{prefix}-postgresql", "Ingress") == [database.name]
    assert selected(f"{prefix}-operator", "Egress") == [operator.name]

    # What an enforcing plugin would allow, from these objects and the live pods.
    api_server = Endpoint(release.cluster.gateway_ip)  # pods reach it at the advertise address
    dns = Endpoint(release.cluster.gateway_ip)         # CoreDNS on the host, at the same address
    api_port = int(release.cluster.server.rsplit(":", 1)[1])

    def allowed(source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return connection_allowed(policies, source, target, port, namespaces, protocol)

    verdicts = {
        "grader->server": all(allowed(grader, s, SERVER_PORT) for s in servers),
        "grader->dns": allowed(grader, dns, 53, "UDP") and allowed(grader, dns, 53, "TCP"),
        "grader->postgresql": allowed(grader, database, 5432),
        "grader->apiserver": allowed(grader, api_server, api_port) or allowed(grader, api_server, 443),
        "grader->lms": any(allowed(grader, x, 8000) for x in lms),
        "server->postgresql": all(allowed(s, database, 5432) for s in servers),
        "operator->postgresql": allowed(operator, database, 5432),
        "lms->postgresql": any(allowed(x, database, 5432) for x in lms),
        "lms->server": all(allowed(x, s, SERVER_PORT) for x in lms for s in servers),
    }
    assert verdicts == {
        "grader->server": True, "grader->dns": True, "grader->postgresql": False, "grader->apiserver": False,
        "grader->lms": False, "server->postgresql": True, "operator->postgresql": False,
        "lms->postgresql": False, "lms->server": True,
    }, json.dumps(verdicts, indent=1)


PROBE = (
    "import json, socket, sys\n"
    "def tcp(host, port):\n"
    "    try:\n"
    "        socket.create_connection((host, int(port)), timeout=3).close()\n"
    "        return 'open'\n"
    "    except OSError as exc:\n"
    "        return type(exc).__name__\n"
    "out = {}\n"
    "for label, host, port in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3]):\n"
    "    out[label] = tcp(host, port)\n"
    "try:\n"
    "    socket.gethostbyname(sys.argv[2]); out['dns'] = 'resolved'\n"
    "except OSError as exc:\n"
    "    out['dns'] = type(exc).__name__\n"
    "print(json.dumps(out))\n")


def probe_from(release: Release, pod: dict[str, Any], container: str,
               targets: list[tuple[str, str, int]]) -> dict[str, str]:
    """Connection attempts from inside `pod` (label, host, port), plus a DNS lookup of the first host."""
    argv = [str(x) for target in targets for x in target]
    out = release.kubectl("exec", "-n", release.namespace, pod["metadata"]["name"], "-c", container, "--",
                          "python", "-c", PROBE, *argv, timeout=90)
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_policies_are_enforced(release: Release, tmp_path: Path) -> None:
    """With an enforcer running next to the node: the grader reaches the server and DNS only, and
    PostgreSQL admits the server but not the LMS (the same verdicts as the evaluation above)."""
    if kube_router_binary() is None and (problem := enforcement_problem(release.cluster, tmp_path)) is not None:
        pytest.skip(f"no NetworkPolicy enforcement on this machine: {problem}; kube-router (which works "
                    f"here) is not built: set XQK8S_KUBE_ROUTER_BINARY and install ipset")
    cg, queue = "enforced", "enforced-course"
    release.apply_coursegrader(cg, queue, slots=1, scaling={"minReplicas": 1, "maxReplicas": 1})
    try:
        (grader,) = release.wait_graders_ready(cg, 1)
        (database,) = pods(release.cluster, release.namespace, "app.kubernetes.io/component=postgresql")
        server = next(p for p in pods(release.cluster, release.namespace, "app.kubernetes.io/component=server"))
        lms = next(p for p in pods(release.cluster, release.namespace, "app.kubernetes.io/name=lms-simulator"))
        api_port = int(release.cluster.server.rsplit(":", 1)[1])
        from_grader = [("server", f"{release.server}.{release.namespace}.svc", SERVER_PORT),
                       ("postgresql", database["status"]["podIP"], 5432),
                       ("apiserver", release.cluster.gateway_ip, api_port)]
        to_database = [("postgresql", database["status"]["podIP"], 5432)]
        # Without enforcement everything is open: the probes themselves can reach every target.
        open_before = (probe_from(release, grader, "grader", from_grader), probe_from(release, lms, "lms", to_database))
        with running_kube_router(release.cluster, tmp_path / "kube-router.log"):
            enforced = (probe_from(release, grader, "grader", from_grader),
                        probe_from(release, server, "server", to_database),
                        probe_from(release, lms, "lms", to_database))
    finally:
        release.delete_coursegrader(cg)
    print(f"before: {open_before}; enforced by kube-router: {enforced}")
    assert open_before == ({"server": "open", "postgresql": "open", "apiserver": "open", "dns": "resolved"},
                           {"postgresql": "open", "dns": "resolved"}), open_before
    grader_seen, server_seen, lms_seen = enforced
    assert grader_seen["server"] == "open" and grader_seen["dns"] == "resolved", grader_seen
    assert grader_seen["postgresql"] != "open" and grader_seen["apiserver"] != "open", grader_seen
    assert server_seen["postgresql"] == "open", server_seen
    assert lms_seen["postgresql"] != "open", lms_seen
