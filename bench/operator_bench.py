"""Operator benchmark (`make bench-operator`): latency, scale reaction and memory on a real control plane.

Everything is real and on loopback: a tier-A control plane (etcd + kube-apiserver, from
K8S_TEST_BIN_DIR), a throwaway PostgreSQL with the XQueue server, and the operator as its own process
(`python -m coursegrader_operator`, production defaults: 2 s scale interval, 5 s status rate limit).

Figures (anchors.md §6.4/§6.5):
1. create -> Deployment created and status written, p50/p99 over N CourseGraders created in a burst
   (O1 aim: p99 < 2 s).
2. scale reaction: a burst of 200 submissions on the real server -> the operator patches the
   Deployment (A1 aim: < 5 s). Measured from the last accepted submission and from the first.
3. operator RSS while managing 1,000 CourseGraders (O2 aim: < 256 MiB), and the time to reconcile
   them all; then a restart with every ConfigMap deleted -> time until all are restored (O3).

Run: make bench-operator   (or: K8S_TEST_BIN_DIR=... .venv/bin/python bench/operator_bench.py --help)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coursegrader_operator import constants as C  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from xqueue_server.local_pg import LocalPostgres  # noqa: E402
from xqueue_server.testing import ServerThread, create_database  # noqa: E402

NS = "bench"
CRD = ROOT / "crds" / f"{C.PLURAL}.{C.GROUP}.yaml"
RESULTS = ROOT / "bench" / "results" / "operator.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (how much of the 2 cores the operator itself used)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Api:
    """Minimal async client for the bench's own calls (admin client certificate from the plane)."""

    def __init__(self, cp: ControlPlane) -> None:
        ctx = ssl.create_default_context(cafile=str(cp.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(cp.pki_dir / "admin.crt"), str(cp.pki_dir / "admin.key"))
        self.server = cp.server
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=64),
                                             timeout=aiohttp.ClientTimeout(total=60))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        async with self.session.request(method, self.server + path, json=body, params=params) as resp:
            payload: dict[str, Any] = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {payload.get('message')}")
            return payload

    async def watch(self, path: str, on_event: Callable[[str, dict[str, Any]], None],
                    ready: asyncio.Event, **params: str) -> None:
        """Stream events into on_event until cancelled (reconnects with the last resourceVersion)."""
        for attempt in range(40):  # a just-Established CRD can answer 404 for a moment
            try:
                listing = await self.call("GET", path, **params)
                break
            except RuntimeError:
                if attempt == 39:
                    raise
                await asyncio.sleep(0.5)
        for item in listing.get("items", []):
            on_event("ADDED", item)
        rv = listing["metadata"]["resourceVersion"]
        ready.set()
        while True:
            query = {**params, "watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                     "timeoutSeconds": "300"}
            async with self.session.get(self.server + path, params=query,
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=400)) as resp:
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event["type"], obj)


def cg_path(name: str | None = None) -> str:
    path = f"/apis/{C.API_VERSION}/namespaces/{NS}/{C.PLURAL}"
    return f"{path}/{name}" if name else path


def coursegrader(name: str, queue: str, url: str, **scaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": name},
        "spec": {
            "queue": queue,
            "server": {"url": url, "credentialsSecretRef": {"name": "grader-login"}},
            "repo": {"url": "https://git.example.invalid/course.git"},
            "slots": 4,
            "scaling": {"minReplicas": 1, "maxReplicas": 10, **scaling},
        },
    }


class Tracker:
    """First-seen times of Deployments and of written status, per CourseGrader name."""

    def __init__(self) -> None:
        self.deployment: dict[str, float] = {}
        self.status: dict[str, float] = {}
        self.replicas: dict[str, list[tuple[float, int]]] = {}
        self.configmaps: set[str] = set()
        self.configmap_seen: dict[str, float] = {}

    def on_cg(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        reconciled = any(c.get("type") == C.COND_RECONCILED for c in status.get("conditions", []))
        if reconciled and status.get("observedGeneration") == obj["metadata"].get("generation"):
            self.status.setdefault(name, time.monotonic())

    def on_deployment(self, kind: str, obj: dict[str, Any]) -> None:
        owner = obj["metadata"].get("labels", {}).get(C.LABEL_OWNER, "")
        now = time.monotonic()
        self.deployment.setdefault(owner, now)
        history = self.replicas.setdefault(owner, [])
        replicas = int(obj.get("spec", {}).get("replicas") or 0)
        if not history or history[-1][1] != replicas:
            history.append((now, replicas))

    def on_configmap(self, kind: str, obj: dict[str, Any]) -> None:
        owner = obj["metadata"].get("labels", {}).get(C.LABEL_OWNER, "")
        if kind == "DELETED":
            self.configmaps.discard(owner)
        else:
            self.configmaps.add(owner)
            self.configmap_seen[owner] = time.monotonic()


async def wait_until(check: Callable[[], bool], limit: float, what: str) -> float:
    """Poll `check` every 50 ms for at most `limit` seconds (bounded in time and count)."""
    start = time.monotonic()
    for _ in range(int(limit / 0.05) + 1):
        if check():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what}: not reached in {limit}s")


@contextlib.asynccontextmanager
async def operator_process(env: dict[str, str], log: Path,
                           profile: Path | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """The operator as its own process (its RSS is what we measure), exactly as the chart runs it."""
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *prefix, "-m", "coursegrader_operator", "--log-format", "plain",
            env={**os.environ, **env}, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        # SIGINT: kopf stops gracefully, so a profiler gets to write its results.
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)


async def submit_burst(server: ServerThread, queue: str, count: int) -> tuple[float, float]:
    """`count` submissions as the LMS; returns (time of the first, time of the last accepted)."""
    # unsafe=True: aiohttp otherwise drops cookies set by an IP-address host (the session cookie).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        login = await http.post(f"{server.url}/xqueue/login/",
                                data={"username": server.lms.username, "password": server.lms.password})
        login.release()
        first = time.monotonic()
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            header = {"lms_callback_url": f"http://127.0.0.1:9/cb/{queue}/{i}", "lms_key": uuid.uuid4().hex,
                      "queue_name": queue}
            async with sem, http.post(f"{server.url}/xqueue/submit/",
                                      data={"xqueue_header": json.dumps(header), "xqueue_body": "{}"}) as r:
                reply = await r.json(content_type=None)
                if reply.get("return_code") != 0:
                    raise RuntimeError(f"submit failed: {reply}")

        await asyncio.gather(*(one(i) for i in range(count)))
        return first, time.monotonic()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform(),
                                           "load_average_at_start": os.getloadavg()[0]}}
    # Its own temp dir: LocalPostgres hands the directory to an unprivileged user when run as root.
    pg_dir = tempfile.mkdtemp(prefix="operator-bench-pg-")
    pg = LocalPostgres(pg_dir)
    cp = ControlPlane(tier="A", work_dir=work / "plane")
    server: ServerThread | None = None
    api: Api | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        print("starting control plane (tier A) and PostgreSQL + XQueue server ...", flush=True)
        # Blocking starts (and the server's own asyncio.run helpers) go to threads, off this loop.
        await asyncio.to_thread(cp.start)
        await asyncio.to_thread(pg.start)
        total = args.scale_objects
        queues = tuple(f"bench-q{i}" for i in range(total)) + tuple(f"burst-q{i}" for i in range(args.bursts))
        database = await asyncio.to_thread(create_database, pg.url)
        server = await asyncio.to_thread(ServerThread.start, database, queues=queues, lease_seconds=600)
        cp.kubectl("apply", "--server-side", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", f"crd/{C.PLURAL}.{C.GROUP}", "--timeout=60s")
        cp.kubectl("create", "namespace", NS)
        cp.kubectl("create", "secret", "generic", "grader-login", "-n", NS,
                   f"--from-literal=username={server.grader.username}",
                   f"--from-literal=password={server.grader.password}")

        api = Api(cp)
        tracker = Tracker()
        ready = [asyncio.Event() for _ in range(3)]
        tasks = [
            asyncio.create_task(api.watch(cg_path(), tracker.on_cg, ready[0])),
            asyncio.create_task(api.watch(f"/apis/apps/v1/namespaces/{NS}/deployments", tracker.on_deployment,
                                          ready[1], labelSelector=C.MANAGED_SELECTOR)),
            asyncio.create_task(api.watch(f"/api/v1/namespaces/{NS}/configmaps", tracker.on_configmap,
                                          ready[2], labelSelector=C.MANAGED_SELECTOR)),
        ]
        for event, task in zip(ready, tasks, strict=True):
            waiter = asyncio.create_task(event.wait())
            await asyncio.wait([waiter, task], timeout=60, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # raises the watcher's error
            if not event.is_set():
                raise TimeoutError("a watch did not start in 60 s")

        env = {"KUBECONFIG": str(cp.kubeconfig), "XQOP_NAMESPACES": NS,
               "XQOP_GRADER_IMAGE": "registry.invalid/xqueue-grader:bench",
               "XQOP_ADMIN_USERNAME": server.admin.username, "XQOP_ADMIN_PASSWORD": server.admin.password}
        log = work / "operator.log"
        async with operator_process(env, log, args.profile) as proc:
            await asyncio.sleep(3)  # let it list and open its watches before the clock starts
            baseline_rss = rss_mib(proc.pid)[0]

            # 1. create -> Deployment + status, N objects in a burst
            n = args.objects
            created: dict[str, float] = {}
            sem = asyncio.Semaphore(args.concurrency)

            async def create(i: int) -> None:
                name = f"lat-{i}"
                async with sem:
                    await api.call("POST", cg_path(), coursegrader(name, f"bench-q{i}", server.url))
                    created[name] = time.monotonic()

            def cpu_by_process() -> dict[str, float]:
                pids = {c.name: c.proc.pid for c in cp.components if c.proc is not None}
                pids.update(operator=proc.pid, bench=os.getpid())
                return {name: cpu_seconds(pid) for name, pid in pids.items()}

            t0 = time.monotonic()
            cpu0 = cpu_seconds(proc.pid)
            before = cpu_by_process()
            await asyncio.gather(*(create(i) for i in range(n)))
            await wait_until(lambda: all(k in tracker.status and k in tracker.deployment for k in created),
                             120, "status for the latency batch")
            spent = {k: round(v - before[k], 2) for k, v in cpu_by_process().items()}
            wall = time.monotonic() - t0
            both = [max(tracker.status[k], tracker.deployment[k]) - created[k] for k in created]
            dep = [tracker.deployment[k] - created[k] for k in created]
            st = [tracker.status[k] - created[k] for k in created]
            results["create_to_ready"] = {
                "objects": n, "concurrency": args.concurrency, "burst_seconds": round(max(created.values()) - t0, 2),
                "p50_s": round(percentile(both, 50), 3), "p99_s": round(percentile(both, 99), 3),
                "max_s": round(max(both), 3), "deployment_p50_s": round(percentile(dep, 50), 3),
                "deployment_p99_s": round(percentile(dep, 99), 3), "status_p50_s": round(percentile(st, 50), 3),
                "status_p99_s": round(percentile(st, 99), 3),
                "operator_cpu_ms_per_object": round(1000 * (cpu_seconds(proc.pid) - cpu0) / n, 1),
                # Where the 2 cores went while the burst was handled (all processes share them).
                "cpu_seconds_by_process": spent, "wall_seconds": round(wall, 2),
            }
            print(f"1. create -> Deployment + status, burst of {n} at concurrency {args.concurrency}: "
                  f"p50 {results['create_to_ready']['p50_s']}s, p99 {results['create_to_ready']['p99_s']}s",
                  flush=True)

            # 1b. the same one at a time: the latency of a single course op's `kubectl apply`
            single: list[float] = []
            for i in range(n, 2 * n):
                name = f"one-{i}"
                await api.call("POST", cg_path(), coursegrader(name, f"bench-q{i}", server.url))
                made = time.monotonic()
                def created_ready(k: str = name) -> bool:
                    return k in tracker.status and k in tracker.deployment

                await wait_until(created_ready, 60, name)
                single.append(max(tracker.status[name], tracker.deployment[name]) - made)
            results["create_to_ready_one_at_a_time"] = {
                "objects": n, "p50_s": round(percentile(single, 50), 3), "p99_s": round(percentile(single, 99), 3),
                "max_s": round(max(single), 3)}
            print(f"   one at a time ({n} objects): p50 {percentile(single, 50):.3f}s, "
                  f"p99 {percentile(single, 99):.3f}s", flush=True)

            # 2. scale reaction to a burst of submissions on the real server
            reactions_last: list[float] = []
            reactions_first: list[float] = []
            to_max: list[float] = []
            for b in range(args.bursts):
                name, queue = f"burst-{b}", f"burst-q{b}"
                await api.call("POST", cg_path(), coursegrader(name, queue, server.url))
                def burst_ready(n: str = name) -> bool:
                    return n in tracker.status and n in tracker.deployment

                def scaled_up(n: str = name) -> bool:
                    return any(r > 1 for _, r in tracker.replicas.get(n, []))

                def at_max(n: str = name) -> bool:
                    return any(r == 10 for _, r in tracker.replicas.get(n, []))

                await wait_until(burst_ready, 60, "burst CG")
                await asyncio.sleep(2.5)  # at least one scale tick with an empty queue
                first, last = await submit_burst(server, queue, args.burst_size)
                await wait_until(scaled_up, 30, "scale-up")
                up_at = next(t for t, r in tracker.replicas[name] if r > 1)
                reactions_last.append(max(0.0, up_at - last))
                reactions_first.append(up_at - first)
                await wait_until(at_max, 30, "maxReplicas")
                to_max.append(next(t for t, r in tracker.replicas[name] if r == 10) - first)
            results["scale_reaction"] = {
                "bursts": args.bursts, "submissions_per_burst": args.burst_size, "scale_interval_s": 2,
                "from_last_submission_p50_s": round(statistics.median(reactions_last), 3),
                "from_last_submission_max_s": round(max(reactions_last), 3),
                "from_first_submission_p50_s": round(statistics.median(reactions_first), 3),
                "from_first_submission_max_s": round(max(reactions_first), 3),
                "to_max_replicas_max_s": round(max(to_max), 3),
            }
            print(f"2. scale reaction ({args.bursts} bursts of {args.burst_size}): decision "
                  f"{results['scale_reaction']['from_last_submission_max_s']}s max after the last submission "
                  f"({results['scale_reaction']['from_first_submission_max_s']}s max after the first)", flush=True)

            # 3. memory while managing `total` CourseGraders
            start = time.monotonic()
            cpu0 = cpu_seconds(proc.pid)
            rest = [i for i in range(2 * n, total)]

            async def create_rest(i: int) -> None:
                async with sem:
                    await api.call("POST", cg_path(), coursegrader(f"cg-{i}", f"bench-q{i}", server.url))

            await asyncio.gather(*(create_rest(i) for i in rest))
            managed = total + args.bursts
            await wait_until(lambda: len(tracker.status) >= managed, 900, f"status on {managed} CourseGraders")
            all_reconciled = time.monotonic() - start
            cpu_create = cpu_seconds(proc.pid) - cpu0
            cpu0 = cpu_seconds(proc.pid)
            await asyncio.sleep(args.settle)
            steady_cpu = (cpu_seconds(proc.pid) - cpu0) / args.settle
            rss, peak = rss_mib(proc.pid)
            results["memory"] = {
                "coursegraders": managed, "rss_mib": round(rss, 1), "peak_rss_mib": round(peak, 1),
                "baseline_rss_mib": round(baseline_rss, 1),
                "seconds_to_reconcile_new": round(all_reconciled, 1), "settle_seconds": args.settle,
                "operator_cpu_ms_per_new_object": round(1000 * cpu_create / max(1, len(rest)), 1),
                "steady_state_operator_cpu_percent": round(100 * steady_cpu, 1),
            }
            print(f"3. {managed} CourseGraders: RSS {rss:.0f} MiB (peak {peak:.0f} MiB, idle start "
                  f"{baseline_rss:.0f} MiB); {len(rest)} new ones reconciled in {all_reconciled:.1f}s", flush=True)

        # 4. restart with every ConfigMap gone: time until the operator restored them all
        await api.call("DELETE", f"/api/v1/namespaces/{NS}/configmaps", labelSelector=C.MANAGED_SELECTOR)
        await wait_until(lambda: not tracker.configmaps, 120, "ConfigMaps deleted")
        async with operator_process(env, log) as proc:
            start = time.monotonic()
            await wait_until(lambda: len(tracker.configmaps) >= managed, 900, "ConfigMaps restored")
            resync = time.monotonic() - start
            rss, peak = rss_mib(proc.pid)
            cpu = cpu_seconds(proc.pid)
        results["restart_resync"] = {"coursegraders": managed, "seconds_to_restore_all": round(resync, 1),
                                     "operator_cpu_seconds": round(cpu, 1),
                                     "rss_mib_after": round(rss, 1), "peak_rss_mib": round(peak, 1)}
        print(f"4. restart: {managed} deleted ConfigMaps restored in {resync:.1f}s "
              f"(RSS {rss:.0f} MiB, peak {peak:.0f} MiB)", flush=True)
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line or "[ERROR" in line]
        results["operator_log_errors"] = len(errors)
        if errors:
            print(f"   operator log has {len(errors)} error lines, e.g.: {errors[0][:200]}", flush=True)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if api is not None:
            await api.close()
        if server is not None:
            server.stop()
        pg.stop()
        cp.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        if args.keep:
            print(f"kept work dir {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100, help="CourseGraders in the latency burst")
    parser.add_argument("--concurrency", type=int, default=10, help="parallel creates in the burst")
    parser.add_argument("--bursts", type=int, default=5, help="submission bursts (one CourseGrader each)")
    parser.add_argument("--burst-size", type=int, default=200, help="submissions per burst")
    parser.add_argument("--scale-objects", type=int, default=1000, help="CourseGraders for the memory figure")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds of steady state before RSS")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    parser.add_argument("--profile", type=Path, help="cProfile the operator's first run into this file")
    args = parser.parse_args()
    if not os.environ.get("K8S_TEST_BIN_DIR"):
        raise SystemExit("set K8S_TEST_BIN_DIR (make bench-operator does)")
    results = asyncio.run(run(args))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
