"""Status page cost on a large database: the latency of ``GET /status/`` as an admin (every queue).

A throwaway PostgreSQL holds ``--history`` finished submissions spread over the retention period
(30 days; about ``--last-hour`` of them in the last hour, a few percent of them poison or with
error replies), ``--pending`` waiting or leased submissions and ``--dead`` dead-lettered callbacks,
over ``--queues`` queues. The server runs in this process (``ServerThread``); the page is fetched
``--requests`` times in a row over HTTP and the latency percentiles are printed, with the database
reads of one page view (``EXPLAIN ANALYZE`` buffers of each status query).

    python bench/status_page.py
    python bench/status_page.py --history 1000000 --pending 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import asyncpg
import requests

from xqueue_server.local_pg import LocalPostgres
from xqueue_server.status_api import QUERIES
from xqueue_server.testing import ServerThread, create_database

FILL = """
INSERT INTO queues (name) SELECT 'course-' || i FROM generate_series(1, $1) i ON CONFLICT DO NOTHING;
"""
HISTORY = """
INSERT INTO submissions (queue_name, lms_callback_url, xqueue_header, xqueue_body, state, retired_reason,
                         arrival_time, pull_count, pulled_at, grader_id, return_time, grader_reply, finished_at)
SELECT 'course-' || (1 + i % $2), 'http://lms/cb/' || i, '{}', '{}',
       CASE WHEN i % 50 = 0 THEN 'retired' ELSE 'delivered' END,
       CASE WHEN i % 50 = 0 THEN 'poison' END,
       t - interval '5 seconds', 1, t - interval '4 seconds', '10.0.' || (i % 20) || '.1',
       CASE WHEN i % 50 = 0 THEN NULL ELSE t END,
       CASE WHEN i % 50 = 0 THEN NULL WHEN i % 17 = 0 THEN '{"msg": "<div class=\\"result-errors\\">x</div>"}'
            ELSE '{"correct": true, "score": 1, "msg": "ok"}' END,
       t + interval '1 second'
  FROM (SELECT i, CASE WHEN i <= $3 THEN now() - random() * interval '1 hour'
                       ELSE now() - interval '1 hour' - random() * interval '30 days' END AS t
          FROM generate_series(1, $1) i) s;
"""
PENDING = """
INSERT INTO submissions (queue_name, lms_callback_url, xqueue_header, xqueue_body, arrival_time, pull_count,
                         pulled_at, lease_expires_at, grader_id)
SELECT 'course-' || (1 + i % $2), 'http://lms/p/' || i, '{}', '{}', now() - random() * interval '10 minutes',
       CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END,
       CASE WHEN i % 10 = 0 THEN now() - interval '20 seconds' END,
       CASE WHEN i % 10 = 0 THEN now() + interval '40 seconds' END,
       CASE WHEN i % 10 = 0 THEN '10.0.' || (i % 20) || '.1' END
  FROM generate_series(1, $1) i;
"""
DEAD = """
INSERT INTO callbacks (submission_id, kind, url, xqueue_header, xqueue_body, state, attempts, last_error)
SELECT id, 'grade', lms_callback_url, '{}', '{}', 'dead', 12, 'LMS returned status_code=500'
  FROM submissions WHERE state = 'delivered' ORDER BY id LIMIT $1;
"""


async def fill(url: str, args: argparse.Namespace) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(FILL.replace("$1", str(args.queues)))
        await conn.execute(HISTORY, args.history, args.queues, args.last_hour)
        await conn.execute(PENDING, args.pending, args.queues)
        await conn.execute(DEAD, args.dead)
        await conn.execute("ANALYZE")
        plans = []
        for name, params in (("queue_summary", (None,)), ("activity", (None, 3600.0, 300.0)),
                             ("graders", (None, 300.0)), ("dead_letters", (None, 5)), ("outbox", ())):
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + QUERIES[name], *params)
            top = json.loads(rows[0][0])[0]
            buffers = top["Plan"].get("Shared Hit Blocks", 0) + top["Plan"].get("Shared Read Blocks", 0)
            plans.append(f"{name:14s} {top['Execution Time']:8.2f} ms  {buffers:7d} buffers")
        return plans
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--history", type=int, default=300_000)
    parser.add_argument("--last-hour", type=int, default=6_000)
    parser.add_argument("--pending", type=int, default=5_000)
    parser.add_argument("--dead", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    pg = LocalPostgres(tempfile.mkdtemp(prefix="xqueue-bench-status-"))
    pg.start()
    try:
        server = ServerThread.start(create_database(pg.url), queues=())
        try:
            started = time.perf_counter()
            plans = asyncio.run(fill(server.settings.database_url or "", args))
            print(f"filled in {time.perf_counter() - started:.1f} s: {args.history} finished "
                  f"({args.last_hour} in the last hour), {args.pending} pending, {args.dead} dead letters, "
                  f"{args.queues} queues")
            for line in plans:
                print("  " + line)
            session = requests.Session()
            session.auth = (server.admin.username, server.admin.password)
            session.get(f"{server.url}/status/", timeout=30).raise_for_status()  # warm the Basic cache
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                response = session.get(f"{server.url}/status/", timeout=30)
                times.append((time.perf_counter() - t0) * 1000)
                response.raise_for_status()
            times.sort()
            print(f"GET /status/ (admin, {args.queues} queues, {len(response.content) // 1024} KiB): "
                  f"median {statistics.median(times):.1f} ms, p95 {times[int(len(times) * 0.95) - 1]:.1f} ms, "
                  f"max {times[-1]:.1f} ms over {args.requests} requests")
        finally:
            server.stop()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
