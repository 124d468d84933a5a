"""Tier C smoke tests: a real node runs restricted pods, networking, DNS, logs, exec and signals work,
and a node's teardown leaves nothing behind on the machine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.node.conftest import node_images, tier_c_skip_reason
from tests.node.realnode import (
    BRIDGE,
    GATEWAY,
    GUARD_COMMENT,
    KUBELET_CHAINS,
    REPO_ROOT,
    STATE_PATH,
    HostLock,
    HostState,
    ImageSpec,
    NodeError,
    RealNode,
    mounts_under,
)

# A tiny HTTP server (stdlib only, runs in any of the project's Python images): answers with the pod's
# name on every path, resolves ?resolve=NAME, and announces SIGTERM on stdout before exiting a little
# later (so the test can still read the pod's log while it terminates).
SERVER = textwrap.dedent("""\
    import http.server, os, signal, socket, sys, threading, time, urllib.parse

    def on_term(signum, frame):
        print("got SIGTERM", flush=True)
        threading.Timer(3, lambda: os._exit(0)).start()

    signal.signal(signal.SIGTERM, on_term)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            body = os.environ.get("POD_NAME", "?")
            if "resolve" in query:
                try:
                    body = socket.gethostbyname(query["resolve"][0])
                except OSError as exc:
                    body = "error: " + str(exc)
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Handler)
    print("serving on 8080", flush=True)
    server.serve_forever()
""")

# Run inside a pod with `python -c`: GET a URL, print the body (or the error).
FETCH = ("import sys, urllib.request\n"
         "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n")


def deployment(name: str, image: str, replicas: int = 2, grace: int = 20) -> dict[str, object]:
    """A Deployment that passes Pod Security "restricted" and uses only the locally imported image."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "automountServiceAccountToken": True,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "web",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-u", "-c", SERVER],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                        "livenessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                      "limits": {"memory": "128Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }


def service(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}


def apply(cluster: RealNode, namespace: str, *objects: dict[str, object]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                         "items": list(objects)}))


def pods(cluster: RealNode, namespace: str, app: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def exec_python(cluster: RealNode, namespace: str, pod: str, code: str, *args: str,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", code, *args, check=check,
                           timeout=60)


@pytest.fixture(scope="module")
def web(real_cluster: RealNode) -> Iterator[tuple[str, list[str]]]:
    """A 2-replica restricted Deployment + Service "web" in its own restricted namespace (shared by the
    read-only tests below): yields (namespace, pod names)."""
    ns = f"xq-node-smoke-{int(time.time())}"
    real_cluster.kubectl("apply", "-f", "-", input=(
        f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        "  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"))
    deadline = time.monotonic() + 30
    while real_cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode != 0:
        assert time.monotonic() < deadline, "ServiceAccount default never appeared"
        time.sleep(0.1)
    apply(real_cluster, ns, deployment("web", real_cluster.images["xqueue-server"]), service("web"))
    t0 = time.monotonic()
    real_cluster.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=120s", timeout=130)
    print(f"2-replica Deployment available after {time.monotonic() - t0:.1f} s")
    names = sorted(str(p["metadata"]["name"]) for p in pods(real_cluster, ns, "web")
                   if not p["metadata"].get("deletionTimestamp"))
    yield ns, names
    real_cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--timeout=90s", timeout=100, check=False)


def test_node_is_ready_with_the_expected_versions_and_guard(real_cluster: RealNode) -> None:
    node = json.loads(real_cluster.kubectl("get", "node", real_cluster.node_name, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.5"
    assert info["containerRuntimeVersion"].startswith("containerd://1.6.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == real_cluster.gateway_ip == GATEWAY
    # The containment guard is in place for every uplink while the node runs.
    mangle = subprocess.run(["iptables", "-t", "mangle", "-S", "FORWARD"], capture_output=True, text=True,
                            check=True).stdout
    guarded = set(re.findall(rf"-A FORWARD -o (\S+) .*{GUARD_COMMENT}.* -j DROP", mangle))
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True,
                                      check=True).stdout)
    expected = {str(link["ifname"]) for link in links} - {"lo", BRIDGE} - {
        str(link["ifname"]) for link in links if str(link["ifname"]).startswith("veth")}
    assert expected and expected <= guarded, mangle
    assert BRIDGE not in guarded


def test_restricted_pods_run_confined(real_cluster: RealNode, web: tuple[str, list[str]]) -> None:
    ns, names = web
    assert len(names) == 2
    status = exec_python(real_cluster, ns, names[0], "print(open('/proc/self/status').read())").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    assert fields["Uid"].split()[0] == "10001"
    write = exec_python(real_cluster, ns, names[0], "open('/probe', 'w')", check=False)
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr


def test_logs_and_pod_to_pod_http_over_the_bridge(real_cluster: RealNode, web: tuple[str, list[str]]) -> None:
    ns, names = web
    assert "serving on 8080" in real_cluster.kubectl("logs", "-n", ns, names[0]).stdout
    ips = {str(p["metadata"]["name"]): str(p["status"]["podIP"])
           for p in pods(real_cluster, ns, "web")}
    target_ip = ips[names[1]]
    assert target_ip.startswith("10.85.0.")
    body = exec_python(real_cluster, ns, names[0], FETCH, f"http://{target_ip}:8080/").stdout.strip()
    assert body == names[1]


def test_cluster_ip_service_and_dns(real_cluster: RealNode, web: tuple[str, list[str]]) -> None:
    ns, names = web
    cluster_ip = real_cluster.kubectl("get", "svc", "web", "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout
    # Through kube-proxy's iptables rules; several requests so both endpoints (and the hairpin case,
    # a pod reaching itself through the Service) are exercised.
    answers = {exec_python(real_cluster, ns, names[0], FETCH, f"http://{cluster_ip}/").stdout.strip()
               for _ in range(6)}
    assert answers <= set(names) and answers
    # Through CoreDNS on the bridge address (the pod's resolv.conf points there).
    resolv = exec_python(real_cluster, ns, names[0], "print(open('/etc/resolv.conf').read())").stdout
    assert f"nameserver {GATEWAY}" in resolv
    fqdn = f"web.{ns}.svc.cluster.local"
    assert exec_python(real_cluster, ns, names[0], FETCH, f"http://{fqdn}/?resolve={fqdn}").stdout.strip() \
        == cluster_ip
    assert exec_python(real_cluster, ns, names[0], FETCH, "http://web/").stdout.strip() in names
    # No forward plugin: names outside the cluster do not resolve (nothing leaves the machine).
    outside = exec_python(real_cluster, ns, names[0],
                          "import socket\ntry:\n socket.gethostbyname('example.com'); print('resolved')\n"
                          "except OSError as e:\n print('error', e)").stdout
    assert outside.startswith("error"), outside


def test_pods_reach_the_apiserver_through_the_kubernetes_service(
        real_cluster: RealNode, web: tuple[str, list[str]]) -> None:
    ns, names = web
    code = ("import json, ssl, urllib.request\n"
            "sa = '/var/run/secrets/kubernetes.io/serviceaccount/'\n"
            "ctx = ssl.create_default_context(cafile=sa + 'ca.crt')\n"
            "req = urllib.request.Request('https://kubernetes.default.svc/version',\n"
            "    headers={'Authorization': 'Bearer ' + open(sa + 'token').read()})\n"
            "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])\n")
    assert exec_python(real_cluster, ns, names[0], code).stdout.strip() == "v1.36.5"


def test_port_forward_reaches_the_service_from_loopback(real_cluster: RealNode, web: tuple[str, list[str]]) -> None:
    ns, names = web
    with real_cluster.port_forward(ns, "svc/web", 80) as port:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.read().decode() in names


def test_deleting_a_pod_delivers_sigterm(real_cluster: RealNode, node_namespace: str) -> None:
    # A short grace period: the namespace controller re-checks a namespace with terminating pods only
    # after their grace period, so it sets how long the namespace deletion afterwards takes.
    apply(real_cluster, node_namespace, deployment("term", real_cluster.images["xqueue-server"], replicas=1,
                                                   grace=6))
    real_cluster.kubectl("rollout", "status", "-n", node_namespace, "deployment/term", "--timeout=120s",
                         timeout=130)
    (pod,) = [str(p["metadata"]["name"]) for p in pods(real_cluster, node_namespace, "term")]
    t0 = time.monotonic()
    real_cluster.kubectl("delete", "pod", "-n", node_namespace, pod, "--wait=false")
    deadline = t0 + 15
    while True:
        logs = real_cluster.kubectl("logs", "-n", node_namespace, pod, check=False).stdout
        if "got SIGTERM" in logs:
            break
        assert time.monotonic() < deadline, f"no SIGTERM within 15 s; log: {logs!r}"
        time.sleep(0.2)
    print(f"SIGTERM seen in the pod's log {time.monotonic() - t0:.2f} s after the delete call")


@pytest.mark.own_node
def test_teardown_leaves_nothing_behind(own_node: RealNode) -> None:
    """A node with a running restricted pod (projected token, emptyDir: mounts under the kubelet root)
    is stopped; afterwards the host is as before: no bridge, chains, guard rules, mounts, cgroups,
    processes, host paths, and the sysctls kubelet changed are restored."""
    node = own_node
    ns = "teardown-check"
    node.kubectl("create", "namespace", ns)
    deadline = time.monotonic() + 30
    while node.kubectl("get", "sa", "default", "-n", ns, check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    apply(node, ns, deployment("web", node.images["xqueue-server"], replicas=1))
    node.kubectl("rollout", "status", "-n", ns, "deployment/web", "--timeout=120s", timeout=130)
    assert mounts_under(Path("/proc/self/mountinfo").read_text(), node.kubelet_root), "expected pod mounts"
    # kubelet changed these while running; the node must put them back.
    assert Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1"
    before = node.before
    assert before is not None
    pids = [c.proc.pid for c in node.components if c.proc is not None]

    node.stop()
    print(f"teardown took {node.timings['teardown']:.1f} s")

    assert node.teardown_problems == []
    assert node.leftovers == []
    # The same facts, checked directly rather than through HostState.
    assert not Path("/sys/class/net", BRIDGE).exists()
    for binary in ("iptables", "ip6tables"):
        dump = subprocess.run([f"{binary}-save"], capture_output=True, text=True, check=True).stdout
        for chain in KUBELET_CHAINS:
            assert f":{chain} " not in dump, (binary, chain)
        assert GUARD_COMMENT not in dump
        assert "KUBE-SERVICES" not in dump
    for name, value in before.sysctls.items():
        if value is not None:
            assert Path("/proc/sys", *name.split(".")).read_text().strip() == value, name
    assert mounts_under(Path("/proc/self/mountinfo").read_text(), node.work_dir) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), pid
    assert processes_mentioning(str(node.containerd_socket)) == []
    assert processes_mentioning(str(node.work_dir)) == []
    assert not Path("/var/lib/kubelet/device-plugins/kubelet.sock").exists()


@pytest.mark.own_node
def test_a_killed_run_is_cleaned_up_by_the_next_start(tmp_path: Path) -> None:
    """A node whose Python process is SIGKILLed (no teardown at all) leaves its components, pods,
    mounts, chains and sysctls behind; the next start removes all of it before it begins."""
    if reason := tier_c_skip_reason():
        pytest.skip(reason)
    images = node_images()
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({n: {"ref": i.ref, "archive": str(i.archive)} for n, i in images.items()}))
    pristine = HostState.capture()
    proc = subprocess.Popen([sys.executable, "-m", "tests.node.realnode"], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "XQK8S_IMAGE_MANIFEST": str(manifest)})
    try:
        assert proc.stdout is not None
        kubeconfig = None
        deadline = time.monotonic() + 300
        while kubeconfig is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"python -m tests.node.realnode exited with {proc.wait(timeout=10)}"
            if line.startswith("KUBECONFIG="):
                kubeconfig = line.strip().split("=", 1)[1]
        assert kubeconfig is not None
        work_dir = Path(kubeconfig).parent
        kubectl_bin = Path(os.environ["K8S_TEST_BIN_DIR"]) / "kubectl"
        kubectl = [str(kubectl_bin), f"--kubeconfig={kubeconfig}", "-n", "default"]
        subprocess.run([*kubectl, "apply", "-f", "-"], check=True, text=True, timeout=60, capture_output=True,
                       input=json.dumps(deployment("web", images["xqueue-server"].ref, replicas=1)))
        subprocess.run([*kubectl, "rollout", "status", "deployment/web", "--timeout=120s"], check=True,
                       timeout=130, capture_output=True)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # only the Python process: the components keep running
        proc.wait(timeout=30)
    assert processes_mentioning(f"{work_dir}/"), "expected the killed run's components to survive it"
    assert mounts_under(Path("/proc/self/mountinfo").read_text(), work_dir)
    assert STATE_PATH.exists()

    node = RealNode(images)
    try:
        node.start()
        assert processes_mentioning(f"{work_dir}/") == []
        assert mounts_under(Path("/proc/self/mountinfo").read_text(), work_dir) == []
        assert not work_dir.exists()
        assert node.timings["recover"] > 0
    finally:
        node.stop()
    assert node.teardown_problems == []
    assert pristine.leftovers(HostState.capture()) == []
    assert not STATE_PATH.exists()


@pytest.mark.own_node
def test_a_node_that_cannot_get_the_lock_touches_nothing() -> None:
    """While another node holds the machine-wide lock, a second one gives up after its bounded wait and
    leaves the host (the other node's bridge and rules) alone; only its own empty work dir goes."""
    if reason := tier_c_skip_reason():
        pytest.skip(reason)
    holder = HostLock(timeout=900)
    holder.acquire()
    try:
        before = HostState.capture()
        node = RealNode({"pause": ImageSpec("localhost/xqueue-k8s/pause:none", Path("/nonexistent.tar"))},
                        lock_timeout=0.5)
        with pytest.raises(NodeError, match="another test node holds"):
            node.start()
        assert not node.work_dir.exists()
        assert "teardown" not in node.timings
        assert before.leftovers(HostState.capture()) == []
    finally:
        holder.release()
