"""Grader benchmark (``make bench-grader``): sandbox overhead per run and graded submissions/s.

1. Sandbox overhead: a trivial job (``pass``) through the real sandbox, measured from the daemon's
   side: hand-off to the zygote, fork of supervisor and child, rlimits, Landlock, seccomp, the run,
   process-group kill, clean-up, reply.  Sequential runs after a warm-up; p50/p99.  Measured with
   the scratch directory on the default temp dir and, when present, on tmpfs (/dev/shm), because
   directory creation/removal on a disk file system is a visible part of the cost.
2. Throughput: the full gradelib pipeline (staff run, student run, comparison, HTML) for the
   example ``square`` problem with a correct answer, ``cores`` submissions in flight; reported as
   submissions/s, per core, and per CPU-second actually consumed (daemon + all sandbox processes).

The machine's load average is printed with the figures: on a shared machine, other work inflates
latencies; compare runs only at similar load.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "grader_image"))

from xqueue_grader.engine import GradingEngine  # noqa: E402
from xqueue_grader.jobs import ScriptJob  # noqa: E402
from xqueue_grader.sandbox import Limits, SandboxPool, SandboxSettings  # noqa: E402

EXAMPLES = str(REPO / "examples" / "course")
SANDBOX_UID = 64000 + os.getpid() % 1000  # only used when running as root
WARMUP = 20
OVERHEAD_RUNS = int(os.environ.get("BENCH_RUNS", "300"))
THROUGHPUT_SECONDS = float(os.environ.get("BENCH_SECONDS", "15"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pool: SandboxPool) -> float:
    """CPU of this process plus the zygote and every process it has reaped (its runs)."""
    total = cpu_seconds(resource.RUSAGE_SELF)
    pid = pool.zygote_pid
    if pid:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        # utime, stime, cutime, cstime (fields 14-17), in clock ticks
        total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


async def overhead(scratch: str | None) -> dict[str, Any]:
    pool = SandboxPool(SandboxSettings(scratch_root=scratch, hidden_paths=[EXAMPLES], sandbox_uid=SANDBOX_UID))
    features = await pool.start()
    limits = Limits()
    job = ScriptJob(code="pass")
    try:
        for _ in range(WARMUP):
            await pool.run(job, limits)
        totals, setups, walls, cleanups = [], [], [], []
        cpu_before = tree_cpu_seconds(pool)
        for _ in range(OVERHEAD_RUNS):
            result = await pool.run(job, limits)
            if result.status != "ok":
                raise RuntimeError(f"trivial run failed: {result}")
            totals.append(result.total_ms)
            setups.append(result.setup_ms)
            walls.append(result.wall_seconds * 1000)
            cleanups.append(result.cleanup_ms)
        # CPU time, unlike latency, hardly depends on what else the machine is doing.
        cpu_used = tree_cpu_seconds(pool) - cpu_before
    finally:
        await pool.close()
    return {
        "scratch": scratch or "default temp dir",
        "runs": OVERHEAD_RUNS,
        "cpu_ms_per_run": round(cpu_used / OVERHEAD_RUNS * 1000, 2),
        "p50_ms": round(percentile(totals, 50), 2),
        "p99_ms": round(percentile(totals, 99), 2),
        "mean_ms": round(statistics.fmean(totals), 2),
        "median_supervisor_setup_ms": round(statistics.median(setups), 2),
        "median_child_lifetime_ms": round(statistics.median(walls), 2),
        "median_cleanup_ms": round(statistics.median(cleanups), 2),
        "seccomp": features.get("seccomp"),
        "landlock_abi": features.get("landlock_abi"),
    }


def lms_body(code: str) -> str:
    return json.dumps({"grader_payload": json.dumps({"grader": "square/grade_square.py"}),
                       "student_info": "{}", "student_response": code})


async def throughput(cores: int) -> dict[str, Any]:
    pool = SandboxPool(SandboxSettings(hidden_paths=[EXAMPLES], sandbox_uid=SANDBOX_UID))
    await pool.start()
    engine = GradingEngine(pool, EXAMPLES, Limits())
    body = lms_body((Path(EXAMPLES) / "square" / "answer.py").read_text())
    for _ in range(5):
        assert (await engine.grade_body(body)).score == 1
    done = 0
    latencies: list[float] = []
    cpu_before = tree_cpu_seconds(pool)
    started = time.monotonic()
    deadline = started + THROUGHPUT_SECONDS

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            result = await engine.grade_body(body)
            if result.score != 1:
                raise RuntimeError(f"unexpected grade: {result}")
            latencies.append((time.monotonic() - t0) * 1000)
            done += 1

    await asyncio.gather(*(worker() for _ in range(cores)))
    elapsed = time.monotonic() - started
    used = tree_cpu_seconds(pool) - cpu_before
    await pool.close()
    rate = done / elapsed
    return {
        "problem": "square (5 tests), correct answer: staff run + student run + comparison",
        "in_flight": cores,
        "graded": done,
        "seconds": round(elapsed, 2),
        "submissions_per_s": round(rate, 1),
        "submissions_per_s_per_core": round(rate / cores, 1),
        "submissions_per_cpu_second": round(done / used, 1) if used > 0 else None,
        "latency_p50_ms": round(percentile(latencies, 50), 1),
        "latency_p99_ms": round(percentile(latencies, 99), 1),
    }


def scratch_dirs() -> list[str | None]:
    dirs: list[str | None] = [None]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        dirs.append("/dev/shm")
    return dirs


async def main() -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"grader benchmark: python {platform.python_version()}, {cores} cores, "
          f"load average before {os.getloadavg()[0]:.2f}")
    for scratch in scratch_dirs():
        result = await overhead(scratch)
        print(f"sandbox overhead per run ({result['scratch']}, {result['runs']} runs): "
              f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, mean {result['mean_ms']} ms "
              f"[supervisor set-up {result['median_supervisor_setup_ms']} ms, "
              f"child {result['median_child_lifetime_ms']} ms, clean-up {result['median_cleanup_ms']} ms; "
              f"seccomp={result['seccomp']}, landlock ABI {result['landlock_abi']}]; "
              f"CPU per run {result['cpu_ms_per_run']} ms")
        print(json.dumps({"bench": "sandbox_overhead", **result}))
    result = await throughput(cores)
    print(f"graded submissions: {result['submissions_per_s']}/s with {cores} in flight = "
          f"{result['submissions_per_s_per_core']}/s per core, {result['submissions_per_cpu_second']} per "
          f"CPU-second; latency p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms")
    print(json.dumps({"bench": "throughput", **result}))
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
