"""XQueue server load benchmark: full cycles/s and submit->callback latency.

One full cycle = an LMS ``submit`` -> a grader's ``get_submission`` (long-poll) -> ``put_result`` ->
the LMS callback received by a fake LMS. Everything runs on this machine on 127.0.0.1: a throwaway
PostgreSQL, the server (``xqueue-server`` in its own process(es)), and this load generator (simulated
LMS clients, simulated no-op pull graders and the fake LMS, in one asyncio process).

Phase 1 (max throughput): LMS clients submit in a closed loop with bounded outstanding work.
Phase 2 (latency): open-loop submissions at half the measured maximum; reports p50/p99 submit->callback.

    make bench-server              # or: python bench/server_load.py --graders 16 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xqueue_server.local_pg import LocalPostgres, free_port  # noqa: E402
from xqueue_server.testing import create_database  # noqa: E402

QUEUE = "bench"
GRADE = json.dumps({"correct": True, "score": 1, "msg": "<p>ok</p>"})


class FakeLMS:
    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.latencies: list[float] = []
        self.received = 0
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        key = json.loads(str(form["xqueue_header"]))["lms_key"]
        sent = self.sent.pop(key, None)
        if sent is not None:
            self.latencies.append(time.perf_counter() - sent)
            self.received += 1
        return web.Response(text="")

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner


async def login(session: aiohttp.ClientSession, base: str, username: str, password: str) -> None:
    async with session.post(f"{base}/xqueue/login/", data={"username": username, "password": password}) as r:
        reply = await r.json(content_type=None)
        assert reply["return_code"] == 0, reply


async def grader_loop(base: str, stop: asyncio.Event, bulk: int) -> None:
    """A no-op pull grader: classic single pulls, or the bulk extension when ``bulk`` > 1."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await login(session, base, "grader", "grader-password")
        params = {"queue_name": QUEUE, "wait": "1", **({"max": str(bulk)} if bulk > 1 else {})}
        while not stop.is_set():
            async with session.get(f"{base}/xqueue/get_submission/", params=params) as r:
                reply = await r.json(content_type=None)
            if reply["return_code"] != 0:
                continue
            if bulk > 1:
                items = json.loads(reply["content"])
                results = json.dumps([{"xqueue_header": i["xqueue_header"], "xqueue_body": GRADE} for i in items])
                async with session.post(f"{base}/xqueue/put_result/", data={"results": results}) as r:
                    await r.read()
                continue
            item = json.loads(reply["content"])
            async with session.post(f"{base}/xqueue/put_result/",
                                    data={"xqueue_header": item["xqueue_header"], "xqueue_body": GRADE}) as r:
                await r.read()


async def submit_one(session: aiohttp.ClientSession, base: str, lms: FakeLMS) -> None:
    key = uuid.uuid4().hex
    header = json.dumps({"lms_callback_url": f"http://127.0.0.1:{lms.port}/cb/{key}", "lms_key": key,
                         "queue_name": QUEUE})
    lms.sent[key] = time.perf_counter()
    async with session.post(f"{base}/xqueue/submit/", data={"xqueue_header": header, "xqueue_body": "{}"}) as r:
        reply = await r.json(content_type=None)
        assert reply["return_code"] == 0, reply


async def closed_loop(base: str, lms: FakeLMS, clients: int, seconds: float, outstanding: int) -> float:
    stop = time.perf_counter() + seconds

    async def client() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await login(session, base, "lms", "lms-password")
            while time.perf_counter() < stop:
                if len(lms.sent) > outstanding:
                    await asyncio.sleep(0.002)
                    continue
                await submit_one(session, base, lms)

    start_received, started = lms.received, time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return (lms.received - start_received) / (time.perf_counter() - started)


async def open_loop(base: str, lms: FakeLMS, rate: float, seconds: float) -> None:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await login(session, base, "lms", "lms-password")
        interval, next_at, end = 1.0 / rate, time.perf_counter(), time.perf_counter() + seconds
        tasks = set()
        while next_at < end:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(submit_one(session, base, lms))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
        await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, base: str) -> None:
    lms = FakeLMS()
    runner = await lms.start()
    stop = asyncio.Event()
    graders = [asyncio.create_task(grader_loop(base, stop, args.bulk)) for _ in range(args.graders)]
    await asyncio.sleep(1.0)
    await closed_loop(base, lms, args.clients, 3.0, args.outstanding)  # warm-up
    await asyncio.sleep(1.0)
    lms.latencies.clear()
    throughput = await closed_loop(base, lms, args.clients, args.seconds, args.outstanding)
    max_latencies = list(lms.latencies)
    await asyncio.sleep(2.0)
    lms.latencies.clear()
    rate = max(1.0, throughput / 2)
    await open_loop(base, lms, rate, args.seconds)
    deadline = time.perf_counter() + 10
    while lms.sent and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling a plain dict
        await asyncio.sleep(0.05)
    half = list(lms.latencies)
    stop.set()
    await asyncio.gather(*graders, return_exceptions=True)
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as r:
        metrics = await r.text()
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith(("xqueue_http_request_duration_seconds_count", "xqueue_pulls_total",
                            "xqueue_empty_pulls_total", "xqueue_callback_attempts_total")):
            name, value = line.rsplit(" ", 1)
            route = name.split("route=\"")[1].split("\"")[0] if "route=" in name else name.split("{")[0]
            counts[route] = counts.get(route, 0.0) + float(value)
    await runner.cleanup()
    print(f"machine: {os.cpu_count()} cores; server workers: {args.workers}; graders: {args.graders}; "
          f"LMS clients: {args.clients}; bulk: {args.bulk}")
    print(f"max throughput: {throughput:.0f} full cycles/s "
          f"(p50 {percentile(max_latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(max_latencies, 0.99) * 1000:.1f} ms "
          "submit->callback at that load)")
    print(f"at half load ({rate:.0f}/s, open loop, {len(half)} cycles): submit->callback "
          f"p50 {percentile(half, 0.5) * 1000:.1f} ms, p99 {percentile(half, 0.99) * 1000:.1f} ms, "
          f"mean {statistics.mean(half) * 1000:.1f} ms; lost: {len(lms.sent)}")
    print("server counters: " + ", ".join(f"{k}={v:.0f}" for k, v in sorted(counts.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graders", type=int, default=16)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--outstanding", type=int, default=64, help="max submissions in flight (closed loop)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=1, help="server processes sharing the port")
    parser.add_argument("--bulk", type=int, default=1, help="graders pull/put up to N per call (extension)")
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="xqueue-bench-pg-")
    pg = LocalPostgres(data_dir).start()
    servers: list[subprocess.Popen[bytes]] = []
    try:
        database_url = create_database(pg.url)
        port = free_port()
        users = Path(data_dir) / "users.yaml"
        users.write_text("lms: lms-password\ngrader: grader-password\n")
        env = {**os.environ, "XQUEUE_DATABASE_URL": database_url, "XQUEUE_PORT": str(port),
               "XQUEUE_QUEUES": QUEUE, "XQUEUE_USERS_FILE": str(users), "XQUEUE_LOG_LEVEL": "WARNING",
               "XQUEUE_STORAGE_DIR": str(Path(data_dir) / "files")}
        for _ in range(args.workers):
            # BENCH_SERVER_PREFIX="-m cProfile -o /tmp/server.prof" profiles the server process.
            prefix = os.environ.get("BENCH_SERVER_PREFIX", "").split()
            servers.append(subprocess.Popen([sys.executable, *prefix, "-m", "xqueue_server"], env=env, cwd=REPO))
        base = f"http://127.0.0.1:{port}"
        import urllib.request

        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        import uvloop  # the load generator must not be the bottleneck

        uvloop.run(run(args, base))
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
