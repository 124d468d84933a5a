"""A real Kubernetes control plane for tests, started from locally built binaries.

No Docker, no kubelet: the binaries come from ``scripts/ensure-k8s-bins.sh`` (Go module proxy builds).

* Tier A (envtest-like): etcd + kube-apiserver. API objects, CRDs, RBAC, admission - but no
  ReplicaSets/Pods, no garbage collection, and namespaces never finish deleting.
* Tier B (kwok cluster): tier A + kube-controller-manager + kube-scheduler + kwok + one fake Node, so
  Deployment -> ReplicaSet -> Pod -> scheduled -> Running/Ready works without a kubelet.
* Tier C (real node): tier B without kwok and its fake Node; the apiserver can reach kubelets (client
  cert, InternalIP). The node itself (containerd, kubelet, kube-proxy, CoreDNS) is
  ``tests.node.realnode.RealNode``, which starts this tier.

Everything listens on 127.0.0.1 only (free ports picked at start), each component writes its own log
file and runs in its own process group, and ``stop()`` (also registered with ``atexit``) tears down
in reverse order with SIGTERM, then SIGKILL. This module deliberately has no pytest dependency so
benchmarks can use it too::

    with ControlPlane(tier="A") as cp:       # bin dir from $K8S_TEST_BIN_DIR
        cp.kubectl("get", "ns")

Pods get fake IPs from kwok's CIDR (10.x): nothing answers there, so never connect to pod or Service
IPs; talk to the apiserver on loopback only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported lazily at runtime: the manager itself needs only the stdlib
    import kubernetes.client

Tier = Literal["A", "B", "C"]

TIER_A_BINARIES = ("etcd", "kube-apiserver", "kubectl")
TIER_C_BINARIES = (*TIER_A_BINARIES, "kube-controller-manager", "kube-scheduler")
TIER_B_BINARIES = (*TIER_C_BINARIES, "kwok")
KWOK_STAGES = "kwok-stages.yaml"

# Name and selector of the fake node kwok manages. No NoSchedule taint (unlike kwok's example):
# there are no real nodes here, and a taint would force tolerations onto every workload under test.
FAKE_NODE_NAME = "kwok-node-0"
FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# Fake pod IPs. Nothing listens there: tests must never dial them.
KWOK_POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the relevant log tails)."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl (or helm) call whose message includes stderr (CalledProcessError's does not)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout!s}\nstderr: {self.stderr!s}"


def bin_dir_problem(bin_dir: str | os.PathLike[str] | None, tier: Tier = "B") -> str | None:
    """Why ``bin_dir`` cannot run ``tier`` (a human-readable reason), or None if it can."""
    if not bin_dir:
        return ("K8S_TEST_BIN_DIR is not set; run `make k8s-bins` (or "
                "`export K8S_TEST_BIN_DIR=$(bash scripts/ensure-k8s-bins.sh --print-dir)`)")
    path = Path(bin_dir)
    needed = {"A": TIER_A_BINARIES, "B": (*TIER_B_BINARIES, KWOK_STAGES), "C": TIER_C_BINARIES}[tier]
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        return f"K8S_TEST_BIN_DIR={path} lacks {', '.join(missing)}; rebuild with `make k8s-bins`"
    return None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are currently free on 127.0.0.1.

    All sockets stay open until every port is picked, so the kernel cannot hand out the same port
    twice; the small race until the servers bind them is accepted.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def tail(path: Path, lines: int = 200) -> str:
    """The last ``lines`` lines of a (possibly large, possibly missing) text file."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            # Read at most ~1 MiB from the end: component logs can grow large during long runs.
            fh.seek(max(0, size - (1 << 20)))
            data = fh.read()
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------------
# PKI (openssl CLI: avoids a dependency on `cryptography`; ~0.4 s per control plane)


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _signed_cert(pki: Path, name: str, subject: str, extensions: str) -> None:
    """Key + certificate ``name`` signed by the test CA, with the given X.509v3 extensions."""
    (pki / f"{name}.ext").write_text(extensions)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key",
             "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
             "-out", f"{name}.crt", cwd=pki)


def sign_cert(pki: Path, name: str, subject: str, *, client: bool = False,
              server_ips: Sequence[str] = ()) -> tuple[Path, Path]:
    """A key + certificate ``name`` signed by the CA in ``pki`` (made by ``make_pki``): a client cert
    (``client=True``; the subject's O/CN are the Kubernetes groups/user) and/or a serving cert for
    ``server_ips``. Returns (cert, key) paths. Used for the node's components in tier C."""
    usages = (["clientAuth"] if client else []) + (["serverAuth"] if server_ips else [])
    if not usages:
        raise ValueError("a certificate needs client=True or server_ips")
    ext = ("basicConstraints=critical,CA:FALSE\n"
           "keyUsage=critical,digitalSignature\n"
           "subjectKeyIdentifier=hash\n"
           "authorityKeyIdentifier=keyid,issuer\n"
           f"extendedKeyUsage={','.join(usages)}\n")
    if server_ips:
        ext += "subjectAltName=" + ",".join(f"IP:{ip}" for ip in server_ips) + "\n"
    _signed_cert(pki, name, subject, ext)
    return pki / f"{name}.crt", pki / f"{name}.key"


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert and ServiceAccount signing key in ``pki``.

    ECDSA P-256 everywhere: Go, OpenSSL and Kubernetes' SA token signer (ES256) accept it, and
    unlike RSA-2048 key generation it costs milliseconds, not seconds, on a loaded 2-core machine
    (measured: RSA made the PKI step take 1-4 s). Leaf certs carry authorityKeyIdentifier
    and basicConstraints=CA:FALSE because Python >= 3.13 verifies with VERIFY_X509_STRICT; Go ignores
    the CN, so the serving cert needs its SANs.
    """
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-sha256", "-subj", "/CN=xqueue-k8s-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash", cwd=pki)
    leaf = ("basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n")
    _signed_cert(pki, "apiserver", "/CN=kube-apiserver",
                 leaf + "extendedKeyUsage=serverAuth\n"
                 "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
                 "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n")
    # system:masters is bound to cluster-admin by RBAC's bootstrap policy.
    _signed_cert(pki, "admin", "/O=system:masters/CN=admin", leaf + "extendedKeyUsage=clientAuth\n")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "sa.key",
             cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, server: str, pki: Path) -> None:
    """Kubeconfig with absolute paths to the CA and the admin client cert (kubectl, the Python
    clients and kopf's fallback loader all read exactly these fields)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "xqueue-test", "cluster": {
            "server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")}}],
        "contexts": [{"name": "xqueue-test", "context": {
            "cluster": "xqueue-test", "user": "admin", "namespace": "default"}}],
        "current-context": "xqueue-test",
        "preferences": {},
    }
    # JSON is valid YAML and needs no third-party module here.
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# ---------------------------------------------------------------------------------------------------
# Processes


@dataclass
class Component:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_file = self.log_path.open("ab")
        self.log_file.write(f"### {' '.join(self.argv)}\n".encode())
        self.log_file.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Own session/process group: a Ctrl-C in the terminal does not hit the components
            # half-way through teardown, and the group can be signalled as a whole.
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # poll() returned None, so the pid has not been reaped and cannot have been reused:
            # signalling it (and its process group, whose id is the same pid) hits only our child.
            self._signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.25,
              alive: Callable[[], str | None] | None = None) -> float:
    """Poll ``check`` until it returns True; bounded by ``timeout`` seconds. Returns the time taken.

    ``alive`` returns a reason when a process the wait depends on has died, so a crash fails fast
    instead of burning the whole budget.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None and (reason := alive()):
            raise ControlPlaneError(f"{what}: {reason}")
        try:
            if check():
                return time.monotonic() - start
        except Exception as exc:  # transient while starting: connection refused, 5xx, 404...
            last_error = exc
        if time.monotonic() >= deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f} s waiting for {what}"
                                    + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


class ControlPlane:
    """etcd + kube-apiserver (tier A), plus controller-manager, scheduler, kwok, fake Node (tier B);
    tier C = tier B without kwok and the fake Node, ready for a real kubelet.

    Attributes used by tests (keep stable): ``kubeconfig`` (path), ``server`` (https URL),
    ``bin_dir``, ``log_dir``, ``work_dir``, ``kubectl()``, ``helm()``, ``api_client()``,
    ``log_tails()``, ``timings`` (seconds per start phase).
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike[str] | None = None,
        tier: Tier = "B",
        work_dir: str | os.PathLike[str] | None = None,
        apiserver_timeout: float = 90.0,
        component_timeout: float = 60.0,
        keep_work_dir: bool | None = None,
        advertise_address: str | None = None,
    ) -> None:
        resolved = bin_dir if bin_dir is not None else os.environ.get("K8S_TEST_BIN_DIR")
        if problem := bin_dir_problem(resolved, tier):
            raise ControlPlaneError(problem)
        assert resolved is not None
        self.bin_dir = Path(resolved).resolve()
        self.tier: Tier = tier
        # Tier C only: the address the `kubernetes` Service's endpoints point at, so pods can reach
        # the apiserver (RealNode relays it to the loopback listener). None keeps the tier A/B setup.
        self.advertise_address = advertise_address
        self.apiserver_timeout = apiserver_timeout
        self.component_timeout = component_timeout
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="xqueue-k8s-cp-"))
        self.keep_work_dir = (os.environ.get("K8S_TEST_KEEP_WORK_DIR") == "1"
                              if keep_work_dir is None else keep_work_dir)
        self.log_dir = self.work_dir / "logs"
        self.pki_dir = self.work_dir / "pki"
        self.kubeconfig = self.work_dir / "admin.kubeconfig"
        self.etcd_port = 0
        self.apiserver_port = 0
        self.server = ""
        self.components: list[Component] = []
        self.timings: dict[str, float] = {}
        self._opener: urllib.request.OpenerDirector | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        if self._started:
            return self
        self._started = True
        # Registered before the first process exists so an interpreter exit never leaks children.
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException as exc:
            message = f"{exc}\n\n{self.log_tails(200)}"
            # Keep the logs and data of a failed start for a post-mortem (path in the message).
            self.keep_work_dir = True
            self.stop()
            if isinstance(exc, ControlPlaneError):
                raise ControlPlaneError(f"{message}\n(work dir kept: {self.work_dir})") from None
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def _start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)  # also creates a caller-given work_dir
        t = time.monotonic()
        make_pki(self.pki_dir)
        self.timings["pki"] = time.monotonic() - t

        self.etcd_port, peer_port, self.apiserver_port = free_ports(3)
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        write_kubeconfig(self.kubeconfig, self.server, self.pki_dir)

        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._spawn("etcd", [
            "--name=test",
            f"--data-dir={self.work_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            # Throwaway data: skipping fsync makes writes cheap on a shared, slow disk.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ])
        self.timings["etcd"] = _wait_for(
            "etcd /readyz", lambda: self._get(f"{etcd_url}/readyz", tls=False) == 200,
            30, alive=self._dead(etcd))

        p = self.pki_dir
        apiserver_args = [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            # Without it the apiserver advertises the default-route interface (or refuses to start
            # on a host without one).
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.work_dir / 'apiserver-certs'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # RBAC (not Node: there are no kubelets) so tests can check an operator's RBAC with
            # impersonation.
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # A loopback advertise address is not a valid Endpoints address; stop the reconciler
            # instead of having it log errors forever.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        ]
        if self.tier == "A":
            # No controller-manager creates the `default` ServiceAccounts in tier A (as envtest).
            apiserver_args.append("--disable-admission-plugins=ServiceAccount")
        if self.tier == "C":
            apiserver_args = self._tier_c_apiserver_args(apiserver_args)
        apiserver = self._spawn("kube-apiserver", apiserver_args)
        self.timings["kube-apiserver"] = _wait_for(
            "kube-apiserver /readyz", lambda: self._get(f"{self.server}/readyz") == 200,
            self.apiserver_timeout, interval=0.5, alive=self._dead(etcd, apiserver))
        _wait_for("namespace default",
                  lambda: self._get(f"{self.server}/api/v1/namespaces/default") == 200,
                  30, alive=self._dead(etcd, apiserver))

        if self.tier == "B":
            self._start_tier_b()
        elif self.tier == "C":
            t = time.monotonic()
            self._start_controllers()
            self._wait_default_service_account(self._dead(*self.components))
            self.timings["tier-c"] = time.monotonic() - t

    def _tier_c_apiserver_args(self, args: list[str]) -> list[str]:
        """Tier C: a real kubelet registers, serves logs/exec and must be reachable from the apiserver."""
        p = self.pki_dir
        sign_cert(p, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
                  client=True)
        # Node authorizer + NodeRestriction as in a real cluster: the kubelet (system:node:<name>) may
        # touch only its own Node and its pods' objects.
        args = [a for a in args if not a.startswith("--authorization-mode=")]
        args += [
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            # The kubelet's serving cert is signed by our CA for its InternalIP (RealNode does that).
            f"--kubelet-certificate-authority={p / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        if self.advertise_address:
            # The `kubernetes` Service then points at this address (lease reconciler), so pods reach
            # the apiserver through kube-proxy; the listener itself stays on 127.0.0.1.
            args = [a for a in args if not a.startswith(("--advertise-address=", "--endpoint-reconciler-type="))]
            args += [f"--advertise-address={self.advertise_address}", "--endpoint-reconciler-type=lease"]
        return args

    def _start_tier_b(self) -> None:
        t = time.monotonic()
        self._start_controllers()
        key, value = FAKE_NODE_ANNOTATION
        self._spawn("kwok", [
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.bin_dir / KWOK_STAGES}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={key}={value}",
            f"--cidr={KWOK_POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
        ])
        alive = self._dead(*self.components)
        self._create_fake_node()
        self._wait_default_service_account(alive)
        # Pods can be scheduled once kwok reported Ready and node-lifecycle removed the not-ready taint
        # that the TaintNodesByCondition admission plugin puts on every new Node.
        _wait_for(f"node {FAKE_NODE_NAME} Ready and untainted (kwok + kube-controller-manager)",
                  self._fake_node_schedulable, self.component_timeout, interval=0.5, alive=alive)
        self.timings["tier-b"] = time.monotonic() - t

    def _wait_default_service_account(self, alive: Callable[[], str | None]) -> None:
        # The ServiceAccount admission plugin rejects pods until the serviceaccount controller has
        # created `default`; its appearance also proves the controller-manager is working.
        _wait_for("ServiceAccount default/default (kube-controller-manager)",
                  lambda: self._get(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default")
                  == 200, self.component_timeout, alive=alive)

    def _start_controllers(self) -> None:
        kubeconfig = str(self.kubeconfig)
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            # Every controller uses the admin kubeconfig instead of per-controller SA tokens, so
            # nothing waits on the token machinery.
            "--use-service-account-credentials=false",
            "--controllers=*",
            f"--service-account-private-key-file={self.pki_dir / 'sa.key'}",
            f"--root-ca-file={self.pki_dir / 'ca.crt'}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",  # no listener at all: nothing to leak, readiness is checked via the API
            # Its default (/usr/libexec/kubernetes/...) would be created on the host.
            f"--flex-volume-plugin-dir={self.work_dir / 'flexvolume'}",
            "--kube-api-qps=100",
            "--kube-api-burst=200",
            "--profiling=false",
        ])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--profiling=false",
        ])

    def _create_fake_node(self) -> None:
        key, value = FAKE_NODE_ANNOTATION
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": FAKE_NODE_NAME,
                "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": FAKE_NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/role": "agent",
                    "node-role.kubernetes.io/agent": "",
                    "type": "kwok",
                },
            },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "nodeInfo": {"architecture": "amd64", "kubeletVersion": "fake", "kubeProxyVersion": "fake",
                             "operatingSystem": "linux"},
                "phase": "Running",
            },
        }
        status = self._request("POST", f"{self.server}/api/v1/nodes", node)
        if status not in (200, 201, 409):
            raise ControlPlaneError(f"creating node {FAKE_NODE_NAME} returned HTTP {status}")

    def _fake_node_schedulable(self) -> bool:
        node = self._get_json(f"{self.server}/api/v1/nodes/{FAKE_NODE_NAME}")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in node.get("status", {}).get("conditions", []))
        blocking = [t for t in node.get("spec", {}).get("taints", [])
                    if t.get("effect") in ("NoSchedule", "NoExecute")]
        return ready and not blocking and not node.get("spec", {}).get("unschedulable", False)

    def stop(self) -> None:
        """Stop everything (reverse start order); idempotent, safe from atexit."""
        for component in reversed(self.components):
            # The apiserver drains for a while on SIGTERM; nobody needs a graceful drain here.
            component.stop(grace=10.0)
        self.components = []
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._own_work_dir and not self.keep_work_dir and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _spawn(self, name: str, args: Sequence[str]) -> Component:
        component = Component(name, [str(self.bin_dir / name), *args], self.log_dir / f"{name}.log")
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
        component.start(env)
        self.components.append(component)
        return component

    @staticmethod
    def _dead(*components: Component) -> Callable[[], str | None]:
        def check() -> str | None:
            for c in components:
                if not c.running():
                    code = c.proc.returncode if c.proc else None
                    return f"{c.name} exited with code {code} (log: {c.log_path})"
            return None
        return check

    # -- HTTP to the apiserver with the admin cert (stdlib only) --------------------------------

    def _https(self) -> urllib.request.OpenerDirector:
        if self._opener is None:
            ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
            ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
            # ProxyHandler({}): never send loopback traffic through an HTTP(S)_PROXY from the env.
            self._opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
        return self._opener

    def _request(self, method: str, url: str, body: Any = None, tls: bool = True) -> int:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        opener = self._https() if tls else urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=5) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def _get(self, url: str, tls: bool = True) -> int:
        return self._request("GET", url, tls=tls)

    def _get_json(self, url: str) -> dict[str, Any]:
        with self._https().open(url, timeout=5) as resp:
            result: dict[str, Any] = json.load(resp)
            return result

    # -- public helpers ------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60.0,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run our own kubectl (matching the server's version) against this control plane."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def helm(self, *args: str, check: bool = True, timeout: float = 300.0
             ) -> subprocess.CompletedProcess[str]:
        """Run our helm (v4) against this control plane, with its cache/config/data dirs inside the
        work dir so tests never read or write the user's ~/.config/helm or ~/.cache/helm."""
        argv = [str(self.bin_dir / "helm"), f"--kubeconfig={self.kubeconfig}", *args]
        helm_home = self.work_dir / "helm"
        env = {**os.environ,
               "HELM_CACHE_HOME": str(helm_home / "cache"),
               "HELM_CONFIG_HOME": str(helm_home / "config"),
               "HELM_DATA_HOME": str(helm_home / "data")}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def api_client(self) -> kubernetes.client.ApiClient:
        """A fresh ``kubernetes.client.ApiClient`` for this control plane (caller closes it)."""
        import kubernetes.config

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def log_paths(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    def log_tails(self, lines: int = 200) -> str:
        """The last ``lines`` lines of every component log, for failure reports."""
        parts = []
        for name, path in self.log_paths().items():
            parts.append(f"===== {name} ({path}), last {lines} lines =====\n{tail(path, lines)}")
        return "\n".join(parts) if parts else f"<no component logs in {self.log_dir}>"


def main(argv: Sequence[str] | None = None) -> int:
    """Start a control plane by hand and keep it until Ctrl-C: ``python -m tests.cluster.controlplane``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tier", choices=("A", "B", "C"), default="B")
    parser.add_argument("--bin-dir", default=os.environ.get("K8S_TEST_BIN_DIR"))
    parser.add_argument("--once", action="store_true", help="start, print timings, stop")
    opts = parser.parse_args(argv)
    with ControlPlane(opts.bin_dir, tier=opts.tier) as cp:
        print(f"KUBECONFIG={cp.kubeconfig}\nserver={cp.server}\nlogs={cp.log_dir}")
        print("timings: " + ", ".join(f"{k}={v:.1f}s" for k, v in cp.timings.items()), flush=True)
        if not opts.once:
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
