"""XQueue server load benchmark: full cycles/s, submit->callback latency and the cost of one cycle.

One full cycle = an LMS ``submit`` -> a grader's classic ``get_submission`` (single pull, no long-poll)
-> ``put_result`` -> the LMS callback received by a fake LMS. Everything runs on this machine on
127.0.0.1: a throwaway PostgreSQL, the server (``xqueue-server``, N processes sharing the port, as the
chart's replicas share one database) and this load generator (LMS clients, classic polling graders
and the fake LMS in one uvloop process).

The shape mirrors an outside check: each LMS client submits and waits for its callback before the
next submission (closed loop), graders poll ``get_submission`` and sleep ``--poll-interval`` when the
queue is empty (like xqueue-watcher). Phase 1 measures the maximum; phase 2 submits open loop at half
of it and reports the latency percentiles there.

Per configuration it prints: cycles/s, latency, lost submissions (no callback) and duplicate
hand-outs (an id handed out twice), CPU seconds per cycle of the server process(es), of all
PostgreSQL processes and of the load generator, and per cycle the statements (pg_stat_statements
calls, BEGIN/COMMIT included: asyncpg sends each as one round trip, so this is also the round trips)
and commits (pg_stat_database.xact_commit) of the benchmark's database.

    make bench-server
    python bench/server_load.py --durability durable,fast --servers 1,2 --seconds 10
    python bench/server_load.py --server-src /tmp/old-tree   # the server of another source tree
    python bench/server_load.py --durability durable --servers 1 --profile /tmp/server.raw --show-statements
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import http_lite  # noqa: E402
from xqueue_server.local_pg import LocalPostgres, free_port  # noqa: E402
from xqueue_server.testing import create_database  # noqa: E402

QUEUE = "bench"
GRADE = json.dumps({"correct": True, "score": 1, "msg": "<p>ok</p>"})
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- CPU accounting
def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


@dataclass
class CpuSnapshot:
    server: float
    postgres: float
    generator: float


class CpuMeter:
    """CPU of the server processes, the postmaster with all its children, and this process. Backends
    that exit between two snapshots are missed, so connections are opened before the first one."""

    def __init__(self, servers: list[int], postmaster: int) -> None:
        self.servers = servers
        self.postmaster = postmaster

    def snapshot(self) -> CpuSnapshot:
        postgres = [self.postmaster, *children_of(self.postmaster)]
        return CpuSnapshot(sum(cpu_seconds(p) for p in self.servers), sum(cpu_seconds(p) for p in postgres),
                           cpu_seconds(os.getpid()))


# ----------------------------------------------------------------------------- profiling (--profile)
def start_profiler(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (``pip install -e '.[profile]'``) sampling one server process for the measured window."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        print("  (--profile: py-spy not installed; pip install -e '.[profile]')")
        return None
    return subprocess.Popen([py_spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200",
                             "-f", "raw", "-o", str(output), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def print_profile(raw: Path, top: int = 15) -> None:
    """The frames the server spent its samples in (self), and its own functions (inclusive)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for name in {f.split(" (")[0] for f in frames if "xqueue_server" in f}:
            inclusive[name] += samples
    if not total:
        return
    print(f"  server profile ({total} samples): most self time")
    for frame, samples in own.most_common(top):
        print(f"    {samples * 100 / total:5.1f}%  {frame}")
    print("  server functions, inclusive")
    for frame, samples in inclusive.most_common(top):
        print(f"    {samples * 100 / total:5.1f}%  {frame}")


# ----------------------------------------------------------------------------- database counters
STATS_SQL = """
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = $1) AS commits,
       (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = $1) AS statements
"""


TOP_STATEMENTS_SQL = """
SELECT calls, mean_exec_time, regexp_replace(query, '\\s+', ' ', 'g') AS query
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname = $1 ORDER BY calls DESC LIMIT 12
"""


async def top_statements(cluster_url: str, database: str) -> list[tuple[int, float, str]]:
    conn = await asyncpg.connect(cluster_url)
    try:
        return [(r["calls"], r["mean_exec_time"], r["query"]) for r in await conn.fetch(TOP_STATEMENTS_SQL, database)]
    finally:
        await conn.close()


async def db_counters(cluster_url: str, database: str) -> tuple[int, int]:
    conn = await asyncpg.connect(cluster_url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(STATS_SQL, database)
        return int(row["commits"]), int(row["statements"])
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- load generator
@dataclass
class Tally:
    sent: dict[str, float] = field(default_factory=dict)  # lms_key -> submitted at
    waiting: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    duplicate_callbacks: int = 0
    handed_out: Counter[int] = field(default_factory=Counter)  # submission id -> times handed out
    seen_keys: set[str] = field(default_factory=set)
    empty_pulls: int = 0


class FakeLMS:
    """Receives the callbacks; the key is the last part of the callback URL."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.port = free_port()

    async def handle(self, path: str, _body: bytes) -> None:
        key = path.rsplit("/", 1)[1]
        sent = self.tally.sent.pop(key, None)
        if sent is None:
            self.tally.duplicate_callbacks += key in self.tally.seen_keys
            return
        self.tally.latencies.append(time.perf_counter() - sent)
        self.tally.received += 1
        waiter = self.tally.waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start(self) -> asyncio.Server:
        return await http_lite.serve("127.0.0.1", self.port, self.handle)


async def call(conn: http_lite.Connection, method: str, path: str,
               form: dict[str, str] | None = None) -> dict[str, Any]:
    status, body = await conn.request(method, path, form)
    assert status == 200, (status, body[:200])
    return json.loads(body)


async def login(conn: http_lite.Connection, username: str, password: str) -> http_lite.Connection:
    reply = await call(conn, "POST", "/xqueue/login/", {"username": username, "password": password})
    assert reply["return_code"] == 0, reply
    return conn


async def classic_grader(port: int, stop: asyncio.Event, tally: Tally, poll_interval: float) -> None:
    """A no-op grader pulling one submission per call, the way xqueue-watcher does."""
    conn = await login(http_lite.Connection("127.0.0.1", port), "grader", "grader-password")
    try:
        while not stop.is_set():
            reply = await call(conn, "GET", f"/xqueue/get_submission/?queue_name={QUEUE}")
            if reply["return_code"] != 0:
                tally.empty_pulls += 1
                await asyncio.sleep(poll_interval)
                continue
            item = json.loads(reply["content"])
            tally.handed_out[json.loads(item["xqueue_header"])["submission_id"]] += 1
            reply = await call(conn, "POST", "/xqueue/put_result/",
                               {"xqueue_header": item["xqueue_header"], "xqueue_body": GRADE})
            assert reply["return_code"] == 0, reply
    finally:
        conn.close()


async def submit_one(conn: http_lite.Connection, lms: FakeLMS) -> asyncio.Future[None]:
    key = uuid.uuid4().hex
    header = json.dumps({"lms_callback_url": f"http://127.0.0.1:{lms.port}/cb/{key}", "lms_key": key,
                         "queue_name": QUEUE})
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    lms.tally.sent[key] = time.perf_counter()
    lms.tally.seen_keys.add(key)
    lms.tally.waiting[key] = done
    reply = await call(conn, "POST", "/xqueue/submit/", {"xqueue_header": header, "xqueue_body": "{}"})
    assert reply["return_code"] == 0, reply
    return done


async def lms_client(conn: http_lite.Connection, lms: FakeLMS, until: float) -> None:
    """Submit, wait for the grade, submit again (a learner per client)."""
    while time.perf_counter() < until:
        done = await submit_one(conn, lms)
        try:
            await asyncio.wait_for(done, 30)
        except TimeoutError:
            return  # counted as lost at the end


async def closed_loop(conns: list[http_lite.Connection], lms: FakeLMS, seconds: float) -> None:
    until = time.perf_counter() + seconds
    await asyncio.gather(*(lms_client(c, lms, until) for c in conns))


async def open_loop(conns: list[http_lite.Connection], lms: FakeLMS, rate: float, seconds: float) -> None:
    """Submissions at a fixed rate, on whichever client connection is free."""
    free: asyncio.Queue[http_lite.Connection] = asyncio.Queue()
    for conn in conns:
        free.put_nowait(conn)

    async def one() -> None:
        conn = await free.get()
        try:
            await submit_one(conn, lms)
        finally:
            free.put_nowait(conn)

    interval, next_at, end = 1.0 / rate, time.perf_counter(), time.perf_counter() + seconds
    tasks: set[asyncio.Task[None]] = set()
    while next_at < end:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += interval
    await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Result:
    label: str
    throughput: float
    p50: float
    p99: float
    half_rate: float
    half_p50: float
    half_p99: float
    lost: int
    duplicate_handouts: int
    duplicate_callbacks: int
    cpu_server: float
    cpu_postgres: float
    cpu_generator: float
    statements: float
    commits: float
    empty_pulls: float
    # --rate: CPU seconds per cycle (server, PostgreSQL, load generator) at that fixed open-loop rate
    fixed_rate: float | None = None
    fixed_cycles_per_s: float = 0.0
    fixed_cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)


async def measure(args: argparse.Namespace, port: int, cluster_url: str, database: str, meter: CpuMeter,
                  label: str) -> Result:
    tally = Tally()
    lms = FakeLMS(tally)
    server = await lms.start()
    stop = asyncio.Event()
    graders = [asyncio.create_task(classic_grader(port, stop, tally, args.poll_interval))
               for _ in range(args.graders)]
    conns = [http_lite.Connection("127.0.0.1", port) for _ in range(args.lms_clients)]
    try:
        for conn in conns:
            await login(conn, "lms", "lms-password")
        # One closed loop; the measured window starts after a warm-up (connections, caches) and both
        # counter snapshots are taken under load, so PostgreSQL's per-backend statistics flushes (at
        # most every second) lag alike at both ends.
        warm_up = min(3.0, args.seconds)
        load = asyncio.create_task(closed_loop(conns, lms, warm_up + args.seconds + 0.5))
        await asyncio.sleep(warm_up)
        tally.latencies.clear()
        commits0, statements0 = await db_counters(cluster_url, database)
        profiler = start_profiler(meter.servers[0], args.seconds, args.profile) if args.profile else None
        cpu0, received0, started, empty0 = meter.snapshot(), tally.received, time.perf_counter(), tally.empty_pulls
        await asyncio.sleep(args.seconds)
        cpu1, received1, elapsed = meter.snapshot(), tally.received, time.perf_counter() - started
        empty = tally.empty_pulls - empty0
        commits1, statements1 = await db_counters(cluster_url, database)
        if profiler is not None:
            await asyncio.to_thread(profiler.wait, 60)
        full = list(tally.latencies)
        await load
        cycles = max(1, received1 - received0)
        throughput = cycles / elapsed
        await asyncio.sleep(0.5)
        tally.latencies.clear()
        rate = max(1.0, throughput / 2)
        await open_loop(conns, lms, rate, args.seconds)
        deadline = time.perf_counter() + 15
        while tally.sent and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling a plain dict
            await asyncio.sleep(0.05)
        half = list(tally.latencies)
        fixed_cycles_per_s, fixed_cpu = 0.0, (0.0, 0.0, 0.0)
        if args.rate:
            # The same offered load for every tree: CPU per cycle at the maximum also moves with the
            # throughput a run reached (more work per wake-up when busier), so it compares less well.
            await asyncio.sleep(0.5)
            fixed0, received0, started = meter.snapshot(), tally.received, time.perf_counter()
            await open_loop(conns, lms, args.rate, args.seconds)
            fixed1, received1, elapsed = meter.snapshot(), tally.received, time.perf_counter() - started
            fixed_cycles = max(1, received1 - received0)
            fixed_cycles_per_s = fixed_cycles / elapsed
            fixed_cpu = ((fixed1.server - fixed0.server) / fixed_cycles,
                         (fixed1.postgres - fixed0.postgres) / fixed_cycles,
                         (fixed1.generator - fixed0.generator) / fixed_cycles)
            deadline = time.perf_counter() + 15
            while tally.sent and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling a plain dict
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.gather(*graders, return_exceptions=True)
        for conn in conns:
            conn.close()
        server.close()
    return Result(
        label=label, throughput=throughput, p50=percentile(full, 0.5), p99=percentile(full, 0.99),
        half_rate=rate, half_p50=percentile(half, 0.5), half_p99=percentile(half, 0.99),
        lost=len(tally.sent), duplicate_handouts=sum(n - 1 for n in tally.handed_out.values() if n > 1),
        duplicate_callbacks=tally.duplicate_callbacks,
        cpu_server=(cpu1.server - cpu0.server) / cycles, cpu_postgres=(cpu1.postgres - cpu0.postgres) / cycles,
        cpu_generator=(cpu1.generator - cpu0.generator) / cycles,
        statements=(statements1 - statements0) / cycles, commits=(commits1 - commits0) / cycles,
        empty_pulls=empty / cycles, fixed_rate=args.rate, fixed_cycles_per_s=fixed_cycles_per_s, fixed_cpu=fixed_cpu,
    )


# ----------------------------------------------------------------------------- one configuration
def start_servers(count: int, env: dict[str, str], source: Path, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    # BENCH_SERVER_PREFIX="-m cProfile -o /tmp/server.prof" profiles the server process.
    prefix = os.environ.get("BENCH_SERVER_PREFIX", "").split()
    # Production log level (INFO: a JSON line per submit, pull, result and delivery), into a file.
    processes = []
    for number in range(count):
        with open(log_dir / f"server-{number}.log", "wb") as log:
            processes.append(subprocess.Popen([sys.executable, *prefix, "-m", "xqueue_server"], env=env, cwd=source,
                                              stdout=log, stderr=log))
    return processes


def wait_ready(base: str) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not become ready")


def run_config(args: argparse.Namespace, durability: str, servers: int) -> Result:
    data_dir = tempfile.mkdtemp(prefix="xqueue-bench-pg-")
    pg = LocalPostgres(data_dir, durable=durability == "durable",
                       options=("shared_preload_libraries=pg_stat_statements",)).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        database_url = create_database(pg.url)
        database = database_url.rsplit("/", 1)[1]

        async def prepare() -> None:
            conn = await asyncpg.connect(pg.url)
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            finally:
                await conn.close()

        asyncio.run(prepare())
        port = free_port()
        users = Path(data_dir) / "users.yaml"
        users.write_text("lms: lms-password\ngrader: grader-password\n")
        env = {**os.environ, "XQUEUE_DATABASE_URL": database_url, "XQUEUE_PORT": str(port),
               "XQUEUE_QUEUES": QUEUE, "XQUEUE_USERS_FILE": str(users), "XQUEUE_LOG_LEVEL": "INFO",
               "XQUEUE_STORAGE_DIR": str(Path(data_dir) / "files"), "PYTHONPATH": str(args.server_src)}
        processes = start_servers(servers, env, args.server_src, Path(data_dir))
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        time.sleep(1.0)  # every process up (readyz answered by one of them)
        postmaster = int((Path(data_dir) / "pgdata" / "postmaster.pid").read_text().split()[0])
        meter = CpuMeter([p.pid for p in processes], postmaster)
        label = f"{durability}, {servers} server process{'es' if servers > 1 else ''}"
        import uvloop  # the load generator must not be the bottleneck

        result = uvloop.run(measure(args, port, pg.url, database, meter, label))
        if args.profile and args.profile.exists():
            print_profile(args.profile)
        if args.show_statements:
            for calls, mean_ms, query in asyncio.run(top_statements(pg.url, database)):
                print(f"    {calls:8d} calls {mean_ms:7.3f} ms  {query[:100]}")
        return result
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        pg.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def report(result: Result) -> None:
    print(f"[{result.label}]")
    print(f"  max throughput: {result.throughput:.0f} full cycles/s "
          f"(submit->callback p50 {result.p50 * 1000:.1f} ms, p99 {result.p99 * 1000:.1f} ms)")
    print(f"  at half load ({result.half_rate:.0f}/s, open loop): p50 {result.half_p50 * 1000:.1f} ms, "
          f"p99 {result.half_p99 * 1000:.1f} ms")
    total = result.cpu_server + result.cpu_postgres + result.cpu_generator
    print(f"  CPU per cycle: server {result.cpu_server * 1000:.2f} ms, PostgreSQL {result.cpu_postgres * 1000:.2f} ms, "
          f"load generator {result.cpu_generator * 1000:.2f} ms, all {total * 1000:.2f} ms")
    if result.fixed_rate:
        server, postgres, generator = (value * 1000 for value in result.fixed_cpu)
        print(f"  CPU per cycle at {result.fixed_rate:g}/s offered ({result.fixed_cycles_per_s:.0f}/s done): "
              f"server {server:.2f} ms, PostgreSQL {postgres:.2f} ms, load generator {generator:.2f} ms, "
              f"all {server + postgres + generator:.2f} ms")
    print(f"  per cycle: {result.statements:.1f} statements (= round trips), {result.commits:.1f} commits, "
          f"{result.empty_pulls:.2f} empty pulls")
    print(f"  lost: {result.lost}, duplicate hand-outs: {result.duplicate_handouts}, "
          f"duplicate callbacks: {result.duplicate_callbacks} (at-least-once allows these)")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lms-clients", type=int, default=16, help="LMS clients, each waits for its grade")
    parser.add_argument("--graders", type=int, default=4, help="classic single-pull graders")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="grader sleep after an empty pull")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--servers", default="1,2", help="server process counts to run, e.g. 1,2")
    parser.add_argument("--durability", default="durable,fast",
                        help="PostgreSQL modes to run: durable (its defaults), fast (fsync etc. off)")
    parser.add_argument("--server-src", type=Path, default=REPO, help="source tree the server runs from")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole matrix this many times")
    parser.add_argument("--rate", type=float, metavar="N",
                        help="also measure CPU per cycle at N submissions/s open loop (the same for every tree)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="sample the (first) server process with py-spy during the measured window into FILE")
    parser.add_argument("--show-statements", action="store_true",
                        help="list the most frequent statements of each run (whole run, from pg_stat_statements)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.durability.split(",") if m.strip()]
    if not set(modes) <= {"durable", "fast"}:
        parser.error("--durability takes durable and/or fast")
    counts = [int(n) for n in args.servers.split(",")]
    print(f"machine: {os.cpu_count()} cores; LMS clients: {args.lms_clients}; classic graders: {args.graders}; "
          f"{args.seconds:g} s per phase; server from {args.server_src}")
    for _ in range(args.repeat):
        for mode in modes:
            for count in counts:
                report(run_config(args, mode, count))


if __name__ == "__main__":
    main()
