"""The grader daemon: N grading slots pulling one queue, health/readiness/metrics, SIGTERM drain.

Pull rhythm per slot: ``polling.py`` (errors back off up to 30 s).

SIGTERM (``request_stop``): readiness turns false, idle pulls are cancelled, submissions being
graded are finished and their results put, then the process exits 0. Cancelling a pull closes its
connection (aiohttp closes a connection whose request is cancelled), so a parked long-poll ends at
once and our server neither waits for this grader nor hands it a submission it would never read.
After ``drain_seconds`` whatever is still running is abandoned (the server re-offers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from xqueue_grader import health
from xqueue_grader.client import XQueueClient
from xqueue_grader.config import GraderConfig
from xqueue_grader.engine import GradingEngine
from xqueue_grader.handlers import Handler, HandlerContext, build_handlers
from xqueue_grader.logs import RateLimitedLoopErrors
from xqueue_grader.metrics import Metrics
from xqueue_grader.polling import LongPollState, PullKind, next_poll_delay
from xqueue_grader.protocol import ProtocolError, is_empty_queue, parse_submission, put_result_form
from xqueue_grader.results import Outcome
from xqueue_grader.sandbox import SandboxPool, SandboxSettings, prctl, procstate, report

log = logging.getLogger("xqueue_grader.daemon")

MAX_ERROR_BACKOFF = 30.0


class GraderDaemon:
    def __init__(self, config: GraderConfig, metrics: Metrics | None = None,
                 pool: SandboxPool | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        # A pool passed in belongs to the caller (tests share one); ours is closed on shutdown.
        self._owns_pool = pool is None
        self.pool = pool or SandboxPool(SandboxSettings(
            scratch_root=config.scratch_dir,
            hidden_paths=[config.grader_root],
            preload=list(config.preload_modules),
            sandbox_uid=config.sandbox_uid,
            require_seccomp=config.require_seccomp,
            require_landlock=config.require_landlock,
        ))
        self.client = XQueueClient(
            config.server_url, config.queue, config.username, config.password,
            basic_auth=config.http_basic_auth, timeout=config.requests_timeout, verify_tls=config.verify_tls,
        )
        self.engine = GradingEngine(self.pool, config.grader_root, config.limits,
                                    config.submission_size_limit_kb, self.metrics)
        self.context = HandlerContext(self.pool, config.limits, config.grader_root, config)
        self.handlers: list[Handler] = []
        self.long_poll = LongPollState(config.long_poll_seconds)
        self._stopping = asyncio.Event()
        self._started = False
        self._slot_tasks: list[asyncio.Task[None]] = []
        self._login_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.graded = 0
        self.in_flight = 0
        self._last_error_log = 0.0
        # Health: this process's limits and priorities at start, what differs now and could not
        # be put back, and the watchdog that checks both and self-tests the sandbox.
        self._baseline: dict[str, Any] = {}
        self._daemon_changes: list[str] = []
        self._sandbox_failure_logged = False
        self._watchdog_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def health_state(self) -> health.HealthState:
        failing_since = self.pool.failing_since
        return health.HealthState(
            started=self._started,
            stopping=self._stopping.is_set(),
            logged_in=self.config.username is None or self.client.logged_in,
            sandbox_running=self.pool.healthy,
            sandbox_broken=self.pool.broken,
            sandbox_failing_for=None if failing_since is None else time.monotonic() - failing_since,
            sandbox_problem=self.pool.last_problem,
            daemon_changes=list(self._daemon_changes),
        )

    @property
    def ready(self) -> bool:
        return health.readiness(self.health_state())[0]

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        """Sandbox, health endpoints, login, slots; returns once pulling has begun."""
        features = await self.pool.start()
        self._baseline = procstate.snapshot()
        self.metrics.record_features(features)
        self.handlers = build_handlers(self.config.handlers, self.engine, self.context)
        layers = report.layers(features)
        log.info("sandbox ready", extra={"fields": {
            "seccomp": features.get("seccomp"), "landlock": features.get("landlock"),
            "landlock_abi": features.get("landlock_abi"), "network": features.get("network"),
            "sandbox_uid": features.get("uid"), "exposed_paths": features.get("exposed_paths"),
            "layers": layers, "missing_layers": report.missing(layers),
        }})
        if features.get("exposed_paths"):
            log.warning("the sandbox can read paths that should be hidden (grader root inside the "
                        "Python installation?)", extra={"fields": {"paths": features.get("exposed_paths")}})
        if not features.get("landlock"):
            log.warning("Landlock unavailable: student code running under this uid could read files "
                        "this process can read, including the grader root")
        await self._start_http()
        self.metrics.slots.set(self.config.slots)
        self._started = True
        self._watchdog_task = asyncio.create_task(self._watchdog())
        self._login_task = asyncio.create_task(self._login_then_pull())
        log.info("grader started", extra={"fields": self.config.public_summary() | {"http_port": self.http_port}})

    async def _login_then_pull(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            if await self.client.login():
                break
            attempt += 1
            log.error("could not log in to XQueue; retrying",
                      extra={"fields": {"attempt": attempt, "retry_in": self.config.login_retry_seconds}})
            await self._sleep(self.config.login_retry_seconds)
        self._update_ready()
        if self._stopping.is_set():
            return
        self._slot_tasks = [asyncio.create_task(self._slot(i)) for i in range(self.config.slots)]

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stop requested: no new pulls, finishing work in progress",
                     extra={"fields": {"in_flight": self.in_flight, "drain_seconds": self.config.drain_seconds}})
            self._stopping.set()
            self._update_ready()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def shutdown(self) -> int:
        """Drain slots within the grace period, then release everything; returns the exit status."""
        self.request_stop()
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog_task
        if self._login_task:
            with contextlib.suppress(asyncio.CancelledError):
                await self._login_task
        abandoned = 0
        if self._slot_tasks:
            _done, pending = await asyncio.wait(self._slot_tasks, timeout=self.config.drain_seconds)
            abandoned = len(pending)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if abandoned:
            log.warning("drain deadline reached; the server will re-offer unfinished submissions",
                        extra={"fields": {"abandoned": abandoned}})
        await self.client.close()
        if self._owns_pool:
            await self.pool.close()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("grader stopped", extra={"fields": {"graded": self.graded}})
        return 0

    async def run(self) -> int:
        await self.start()
        await self.wait_stopped()
        return await self.shutdown()

    # -- slots -------------------------------------------------------------------------------
    async def _sleep(self, seconds: float) -> None:
        """Sleep that ends early when a stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _slot(self, index: int) -> None:
        delay = self.config.poll_min_seconds
        error_delay = self.config.poll_min_seconds
        while not self._stopping.is_set():
            if self.pool.failing_since is not None:
                # A sandbox that cannot grade must not take work: every pull counts towards the
                # server's poison limit, so a broken pod would use up a submission's pulls before
                # liveness restarts it. The watchdog's self-test clears this once the sandbox works.
                await self._sleep(self.config.poll_min_seconds)
                continue
            pulled = await self._pull_unless_stopped()
            if pulled is None:
                break  # stopping
            kind, content = pulled
            if kind == "work":
                delay = self.config.poll_min_seconds
                error_delay = self.config.poll_min_seconds
                await self._process(content)
            elif kind == "again":
                continue
            elif kind == "empty":
                await self._sleep(delay)
                delay = next_poll_delay(delay, self.config.poll_min_seconds, self.config.poll_max_seconds)
            else:
                await self._sleep(error_delay)
                error_delay = min(MAX_ERROR_BACKOFF, error_delay * 2)

    async def _pull_unless_stopped(self) -> tuple[PullKind, Any] | None:
        pull = asyncio.ensure_future(self._pull())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({pull, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if pull in done:
            return pull.result()
        pull.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pull
        return None

    async def _pull(self) -> tuple[PullKind, Any]:
        now = time.monotonic()
        wait = self.long_poll.wait(now)
        outcome = await self.client.get_submission(wait)
        self._update_ready()
        if outcome.ok:
            self.metrics.pulls.labels("submission").inc()
            self.long_poll.record_work(wait)
            return "work", outcome.content
        if outcome.kind == "rejected" and is_empty_queue(outcome.content):
            self.metrics.pulls.labels("empty").inc()
            again = self.long_poll.record_empty(wait, outcome.elapsed, time.monotonic())
            # 1 while requests are held by the server, 0 after falling back to polling.
            self.metrics.long_poll.set(1 if self.long_poll.wait(time.monotonic()) else 0)
            return ("again", None) if again else ("empty", None)
        if outcome.kind == "timeout" and wait:
            # A long-poll that outlived our timeout: nothing arrived; ask again.
            self.metrics.pulls.labels("empty").inc()
            return "again", None
        self.metrics.pulls.labels("error").inc()
        self._log_error("get_submission failed", outcome.kind, outcome.content)
        return "error", None

    def _log_error(self, message: str, kind: str, content: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log < 5:
            return  # one line per 5 s is enough while a server is down
        self._last_error_log = now
        log.error(message, extra={"fields": {"kind": kind, "detail": str(content)[:300]}})

    async def _process(self, content: Any) -> None:
        self.in_flight += 1
        self.metrics.slots_busy.inc()
        started = time.monotonic()
        try:
            try:
                submission = parse_submission(content)
            except ProtocolError as exc:
                self.metrics.submissions.labels(Outcome.UNREADABLE).inc()
                log.error("unreadable submission; cannot reply without its header",
                          extra={"fields": {"reason": str(exc)}})
                return
            for handler in self.handlers:
                try:
                    graded = await handler(submission)
                except Exception:
                    self.metrics.submissions.labels(Outcome.HANDLER_ERROR).inc()
                    log.exception("handler failed; no reply (the server will re-offer the submission)",
                                  extra={"fields": {"submission_id": submission.submission_id}})
                    continue
                if graded is None:
                    continue
                self.metrics.submissions.labels(graded.outcome).inc()
                delivered = await self._put(submission.header, graded.reply)
                self.graded += 1
                log.info("graded", extra={"fields": {
                    "submission_id": submission.submission_id, "outcome": graded.outcome,
                    "score": graded.reply.get("score"), "delivered": delivered,
                    "seconds": round(time.monotonic() - started, 3),
                }})
        finally:
            self.in_flight -= 1
            self.metrics.slots_busy.dec()

    async def _put(self, header: str, reply: dict[str, Any]) -> bool:
        form = put_result_form(header, reply)
        for attempt in range(self.config.put_result_attempts):
            outcome = await self.client.put_result(form)
            if outcome.ok:
                self.metrics.puts.labels("ok").inc()
                return True
            if outcome.kind == "rejected":
                # e.g. "Incorrect key for submission": our lease expired and someone else has it.
                self.metrics.puts.labels("rejected").inc()
                log.warning("put_result rejected", extra={"fields": {"detail": str(outcome.content)[:200]}})
                return False
            self.metrics.puts.labels("error").inc()
            self._log_error("put_result failed", outcome.kind, outcome.content)
            if attempt + 1 < self.config.put_result_attempts:
                # Deliberately not interrupted by a stop: delivering this result is the drain.
                await asyncio.sleep(min(5.0, 0.5 * 2 ** attempt))
        log.error("giving up on put_result; the server will re-offer the submission")
        return False

    # -- health, readiness, metrics ------------------------------------------------------------
    def _update_ready(self) -> None:
        self.metrics.ready.set(1 if self.ready else 0)

    async def _watchdog(self) -> None:
        """Every ``self_test_seconds``: check this process's own limits and priorities (another
        process of our uid may have changed them), and self-test the sandbox unless a run has
        proven it recently, replacing a zygote that fails.  What cannot be repaired from inside
        turns liveness false, so the pod gets restarted."""
        interval = self.config.self_test_seconds
        while not self._stopping.is_set():
            await self._sleep(interval)
            if self._stopping.is_set():
                return
            self.check_daemon_state()
            last = self.pool.last_success
            if self.pool.failing_since is not None or last is None or time.monotonic() - last >= interval:
                with contextlib.suppress(Exception):
                    await self.pool.self_test()
            self._report_sandbox_health()
            self._update_ready()

    def check_daemon_state(self) -> list[str]:
        """Compare with the start; put back what we can; returns what is still different."""
        if not self._baseline:
            return []
        changed = procstate.differences(self._baseline, procstate.snapshot())
        remaining = procstate.restore(self._baseline) if changed else []
        if changed and remaining != self._daemon_changes:
            log.error("the daemon's own limits or priority were changed from outside",
                      extra={"fields": {"changed": changed, "not_restorable": remaining}})
        self._daemon_changes = remaining
        return remaining

    def _report_sandbox_health(self) -> None:
        failing = self.pool.failing_since is not None
        if failing and not self._sandbox_failure_logged:
            log.error("the sandbox does not work; replacing it did not help",
                      extra={"fields": {"problem": (self.pool.last_problem or "")[:300]}})
        elif not failing and self._sandbox_failure_logged:
            log.info("the sandbox works again")
        self._sandbox_failure_logged = failing

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port)
        await site.start()
        addresses = self._runner.addresses
        self.http_port = int(addresses[0][1]) if addresses else self.config.http_port

    async def _healthz(self, _request: web.Request) -> web.Response:
        # Liveness fails when the daemon cannot grade and cannot repair that itself (see
        # health.py): a restart may fix it, while anything else (server down, draining) is not a
        # reason to kill the process.
        self.check_daemon_state()
        alive, reason = health.liveness(self.health_state(), self.config.liveness_grace_seconds)
        if not alive:
            return web.json_response({"status": reason}, status=503)
        return web.json_response({"status": "ok", "pid": os.getpid()})

    async def _readyz(self, _request: web.Request) -> web.Response:
        self._update_ready()
        ready, reason = health.readiness(self.health_state())
        body = {
            "ready": ready,
            "reason": reason,
            "logged_in": self.client.logged_in or self.config.username is None,
            "sandbox": self.pool.healthy,
            "sandbox_working": self.pool.failing_since is None,
            "draining": self._stopping.is_set(),
            "in_flight": self.in_flight,
        }
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        self._update_ready()
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve(config: GraderConfig) -> int:
    """Run a daemon until SIGTERM/SIGINT; the process exit status."""
    import signal

    # Non-dumpable: processes of the same uid (student code, in a pod) can neither ptrace us nor
    # read our /proc files, where the environment holds the XQueue password.
    prctl.set_dumpable(False)
    daemon = GraderDaemon(config)
    loop = asyncio.get_running_loop()
    # Errors the event loop cannot hand to anyone (accept() failing with EMFILE repeats up to a
    # hundred times per wake-up) are logged once per kind and minute, not in a flood.
    loop.set_exception_handler(RateLimitedLoopErrors(logging.getLogger("xqueue_grader.loop")))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.start()
    except Exception as exc:
        log.error("grader could not start", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
        await daemon.shutdown()
        return 1
    await daemon.wait_stopped()
    return await daemon.shutdown()
