"""An LMS stand-in that lives in the cluster: submits like edx-platform and receives the callbacks.

``python -m xqueue_server.lms_simulator`` (the server image runs it as a pod, examples/node/) plays
the edx-platform side of the XQueue protocol (shared/spec/xqueue-protocol.md §6) against a real
XQueue server, so the end-to-end tests, ``make cluster-demo`` and ``make bench-cluster`` exercise the
whole path as a course runs it, with no LMS outside the cluster:

* it submits the way ``xmodule/capa/xqueue_interface.py`` does: a form POST of ``xqueue_header``
  (``lms_callback_url``, ``lms_key``, ``queue_name``) and ``xqueue_body`` (``grader_payload``,
  ``student_info``, ``student_response``) on a session cookie, logging in and retrying once when the
  server answers ``login_required``; the key is edx-platform's md5 queue key, and the callback URL is
  the LMS's own ``/courses/<course>/xqueue/<user>/<block>/score_update`` under this pod's Service;
* it receives the callbacks there like the courseware ``xqueue_callback`` view (404 without the two
  form fields or ``lms_key``, 200 otherwise, stale keys included) and checks the reply as
  ``CodeResponse._parse_score_msg`` does (a JSON dict with ``correct``, ``score`` and ``msg``);
* a small JSON API for whoever drives it (through ``kubectl port-forward``):
  ``POST /simulator/submit`` ``{"submissions": [{"label", "code", "problem" | "grader_payload"}]}``
  submits them (concurrently, like many students) and answers their keys; ``GET /simulator/results``
  answers every submission with its callbacks and the submit-to-callback latency measured here.

It lives in the server package because the server image is the one image with this HTTP stack and the
package already carries the LMS side of its protocol for its demos (``demo.py``, ``cluster_demo.py``);
it is never imported by the server itself. Logs carry keys and grades, never the password or code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from .logs import setup_logging

log = logging.getLogger("xqueue.lms_simulator")

LOGIN_REQUIRED = {"return_code": 1, "content": "login_required"}
COURSE_ID = "course-v1:xqueue-k8s+demo+2026"
# edx-platform's dateformat for qtime (xqueue_interface.dateformat).
QTIME_FORMAT = "%Y%m%d%H%M%S"
PROBLEM_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MAX_SUBMISSIONS_PER_REQUEST = 2000


# --------------------------------------------------------------------------------------------------
# Pure: what edx-platform puts on the wire, and how it reads the reply.


def queue_key(seed: int, qtime: str, anonymous_student_id: str, answer_id: str) -> str:
    """edx-platform's ``lms_key``: md5 of seed + qtime + anonymous student id + answer id."""
    return hashlib.md5(f"{seed}{qtime}{anonymous_student_id}{answer_id}".encode()).hexdigest()


def callback_url(base_url: str, user_id: str, block_id: str, course_id: str = COURSE_ID) -> str:
    """The courseware ``xqueue_callback`` route for one student's problem (dispatch score_update)."""
    return f"{base_url.rstrip('/')}/courses/{course_id}/xqueue/{user_id}/{block_id}/score_update"


def grader_payload_for(problem: str) -> str:
    """The ``<grader_payload>`` text of a problem of the example course (examples/course/<problem>/)."""
    if not PROBLEM_PATTERN.match(problem):
        raise ValueError(f"not a problem name: {problem!r}")
    return json.dumps({"grader": f"{problem}/grade_{problem}.py"})


def xqueue_header(lms_callback_url: str, lms_key: str, queue_name: str) -> str:
    return json.dumps({"lms_callback_url": lms_callback_url, "lms_key": lms_key, "queue_name": queue_name})


def xqueue_body(grader_payload: str, anonymous_student_id: str, qtime: str, seed: int, response: str) -> str:
    student_info = json.dumps({"anonymous_student_id": anonymous_student_id, "submission_time": qtime,
                               "random_seed": seed})
    return json.dumps({"grader_payload": grader_payload, "student_info": student_info,
                       "student_response": response})


def parse_score_msg(xqueue_body_text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The grader reply as ``CodeResponse._parse_score_msg`` reads it: (reply, None) or (None, problem).

    The LMS needs a JSON dict with all of ``correct``, ``score`` and ``msg``, and ``msg`` must parse
    as XML (html5lib is its fallback; a fragment of several elements is wrapped in one, as it does).
    """
    try:
        reply = json.loads(xqueue_body_text)
    except ValueError:
        return None, "xqueue_body is not JSON"
    if not isinstance(reply, dict) or not {"correct", "score", "msg"} <= reply.keys():
        return None, "xqueue_body lacks correct, score or msg"
    msg = str(reply["msg"]).replace("&nbsp;", "&#160;")
    try:
        ET.fromstring(f"<div>{msg}</div>")
    except ET.ParseError as exc:
        return None, f"msg is not XML: {exc}"
    return reply, None


@dataclass
class Submission:
    """One submitted answer and every callback that came back for its key."""

    key: str
    label: str
    queue: str
    submitted_at: float  # wall clock (time.time()) in this pod, just before the submit request
    header: str = ""  # the xqueue_header sent; XQueue must call back with exactly this string
    queue_length: str | None = None  # what XQueue answered (the LMS shows it as queue_len)
    error: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, with_msg: bool = True) -> dict[str, Any]:
        callbacks = [c if with_msg else {k: v for k, v in c.items() if k != "msg"} for c in self.callbacks]
        first = self.callbacks[0]["received_at"] if self.callbacks else None
        return {"key": self.key, "label": self.label, "queue": self.queue, "submitted_at": self.submitted_at,
                "queue_length": self.queue_length, "error": self.error, "callbacks": callbacks,
                "latency_seconds": None if first is None else round(first - self.submitted_at, 4)}


# --------------------------------------------------------------------------------------------------
# I/O: the XQueue client (edx-platform's session) and the LMS's HTTP endpoints.


class XQueueSession:
    """edx-platform's ``XQueueInterface``: form POSTs on one cookie session, login on login_required."""

    def __init__(self, http: aiohttp.ClientSession, server_url: str, username: str, password: str) -> None:
        self.http = http
        self.server_url = server_url.rstrip("/")
        self.username = username
        self.password = password
        self._login_lock = asyncio.Lock()
        self._logins = 0

    async def _post(self, path: str, data: Mapping[str, str]) -> Any:
        # requests follows the 302 to /xqueue/login/ as a GET, which answers login_required: so does aiohttp.
        async with self.http.post(self.server_url + path, data=dict(data)) as response:
            text = await response.text()
            if response.status != 200:
                raise RuntimeError(f"unexpected HTTP status code [{response.status}]")
        try:
            return json.loads(text)
        except ValueError:
            raise RuntimeError("unexpected reply from server") from None

    async def login(self, seen_logins: int) -> None:
        async with self._login_lock:
            if self._logins != seen_logins:  # another submission logged in meanwhile
                return
            reply = await self._post("/xqueue/login/", {"username": self.username, "password": self.password})
            if not isinstance(reply, dict) or reply.get("return_code") != 0:
                raise RuntimeError(f"login as {self.username!r} failed: {reply}")
            self._logins += 1

    async def submit(self, header: str, body: str) -> str:
        """Answers XQueue's content (the queue length); raises RuntimeError with the LMS's message."""
        for _attempt in range(2):
            seen = self._logins
            reply = await self._post("/xqueue/submit/", {"xqueue_header": header, "xqueue_body": body})
            if reply == LOGIN_REQUIRED:
                await self.login(seen)
                continue
            if not isinstance(reply, dict) or reply.get("return_code") != 0:
                content = reply.get("content") if isinstance(reply, dict) else reply
                raise RuntimeError(f"submit failed: {content}")
            return str(reply.get("content"))
        raise RuntimeError(f"could not log in as {self.username!r}")


class Simulator:
    def __init__(self, server_url: str, username: str, password: str, advertise_url: str, queue: str,
                 concurrency: int) -> None:
        self.server_url = server_url
        self.username = username
        self.password = password
        self.advertise_url = advertise_url.rstrip("/")
        self.queue = queue
        self.concurrency = concurrency
        self.submissions: dict[str, Submission] = {}
        self.unknown_callbacks = 0
        self.rejected_callbacks = 0
        self._xqueue: XQueueSession | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # edx-platform's timeout=(3.05, 10): connect, then read.
        timeout = aiohttp.ClientTimeout(sock_connect=3.05, sock_read=10)
        self._http = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.CookieJar(unsafe=True))
        self._xqueue = XQueueSession(self._http, self.server_url, self.username, self.password)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    # -- submitting

    async def _submit_one(self, item: Mapping[str, Any], queue: str) -> Submission:
        assert self._xqueue is not None
        label = str(item.get("label", ""))
        payload = item.get("grader_payload")
        grader_payload = str(payload) if payload is not None else grader_payload_for(str(item["problem"]))
        student = str(item.get("student") or uuid.uuid4().hex)
        block = str(item.get("block") or "block-v1:xqueue-k8s+demo+2026+type@problem+block@code")
        seed = int(item.get("seed", 1))
        qtime = time.strftime(QTIME_FORMAT, time.gmtime())
        key = queue_key(seed, qtime, student, f"{block}_2_1")
        # One callback URL per student and problem, as in the LMS: XQueue retires an earlier
        # submission with the same URL ("latest wins"), so students must not share one.
        url = callback_url(self.advertise_url, student, block)
        header = xqueue_header(url, key, queue)
        record = Submission(key=key, label=label, queue=queue, submitted_at=time.time(), header=header)
        if key in self.submissions:  # same student, problem and second: the LMS would reuse the key too
            record.error = "duplicate lms_key (same student and block within one second)"
            return record
        self.submissions[key] = record
        try:
            record.queue_length = await self._xqueue.submit(
                header,
                xqueue_body(grader_payload, student, qtime, seed, str(item.get("code", ""))))
        except (TimeoutError, aiohttp.ClientError, RuntimeError) as exc:
            # The LMS's messages: 'cannot connect to server', 'unexpected HTTP status code [...]', ...
            record.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else str(exc)
            log.warning("submit failed", extra={"fields": {"key": key, "label": label, "error": record.error}})
        return record

    async def submit_all(self, items: list[Mapping[str, Any]], queue: str) -> list[Submission]:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: Mapping[str, Any]) -> Submission:
            async with gate:
                return await self._submit_one(item, queue)

        records = await asyncio.gather(*(one(item) for item in items))
        log.info("submitted", extra={"fields": {"count": len(records), "queue": queue,
                                                "errors": sum(1 for r in records if r.error)}})
        return list(records)

    # -- HTTP handlers

    async def handle_callback(self, request: web.Request) -> web.Response:
        form = await request.post()
        header_text, body_text = form.get("xqueue_header"), form.get("xqueue_body")
        if not isinstance(header_text, str) or not isinstance(body_text, str):
            self.rejected_callbacks += 1
            raise web.HTTPNotFound()  # what the LMS view does with missing keys
        try:
            header = json.loads(header_text)
            key = str(header["lms_key"])
        except (ValueError, TypeError, KeyError):
            self.rejected_callbacks += 1
            raise web.HTTPNotFound() from None
        received_at = time.time()
        record = self.submissions.get(key)
        if record is None:
            self.unknown_callbacks += 1  # the LMS logs and ignores stale keys, answering 200
            return web.Response(text="")
        reply, problem = parse_score_msg(body_text)
        entry: dict[str, Any] = {"received_at": received_at, "path": request.path, "problem": problem,
                                 "header_verbatim": header_text == record.header}
        if reply is not None:
            entry.update(correct=reply["correct"], score=reply["score"], msg=str(reply["msg"]))
        record.callbacks.append(entry)
        log.info("callback", extra={"fields": {"key": key, "label": record.label, "correct": entry.get("correct"),
                                                "score": entry.get("score"), "problem": problem,
                                                "latency_s": round(received_at - record.submitted_at, 3)}})
        return web.Response(text="")

    async def handle_submit(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            items = data["submissions"]
            queue = str(data.get("queue") or self.queue)
            if not isinstance(items, list) or not 0 < len(items) <= MAX_SUBMISSIONS_PER_REQUEST:
                raise ValueError(f"submissions must be a list of 1..{MAX_SUBMISSIONS_PER_REQUEST}")
            for item in items:
                if not isinstance(item, dict) or ("problem" not in item and "grader_payload" not in item):
                    raise ValueError("each submission needs problem or grader_payload")
                if "problem" in item:
                    grader_payload_for(str(item["problem"]))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        records = await self.submit_all(items, queue)
        return web.json_response({"submitted": [r.as_dict() for r in records]})

    async def handle_results(self, request: web.Request) -> web.Response:
        with_msg = request.query.get("msg", "1") != "0"
        return web.json_response({
            "submissions": [r.as_dict(with_msg) for r in self.submissions.values()],
            "unknown_callbacks": self.unknown_callbacks, "rejected_callbacks": self.rejected_callbacks})

    async def handle_reset(self, _request: web.Request) -> web.Response:
        self.submissions.clear()
        self.unknown_callbacks = self.rejected_callbacks = 0
        return web.json_response({"reset": True})

    async def handle_healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/courses/{course_id}/xqueue/{user_id}/{block_id}/{dispatch}", self.handle_callback)
        app.router.add_post("/simulator/submit", self.handle_submit)
        app.router.add_get("/simulator/results", self.handle_results)
        app.router.add_post("/simulator/reset", self.handle_reset)
        app.router.add_get("/healthz", self.handle_healthz)
        return app


async def serve(simulator: Simulator, host: str, port: int) -> None:
    await simulator.start()
    runner = web.AppRunner(simulator.app(), access_log=None, shutdown_timeout=2)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("listening", extra={"fields": {"host": host, "port": port, "callbacks": simulator.advertise_url,
                                                "xqueue": simulator.server_url, "queue": simulator.queue}})
        await stop.wait()
    finally:
        await runner.cleanup()
        await simulator.stop()


def read_password(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        password = fh.read().rstrip("\r\n")
    if not password:
        raise SystemExit(f"lms_simulator: the password file {path} is empty")
    return password


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xqueue_server.lms_simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-url", required=True, help="XQueue base URL (XQUEUE_INTERFACE url)")
    parser.add_argument("--username", default="lms", help="the LMS's XQueue account (default lms)")
    parser.add_argument("--password-file", required=True, help="file holding that account's password")
    parser.add_argument("--advertise-url", required=True,
                        help="this LMS's base URL as XQueue reaches it, e.g. http://lms.NAMESPACE.svc:8000")
    parser.add_argument("--queue", default="demo-course", help="default queue name of submissions")
    parser.add_argument("--listen-host", default="0.0.0.0")
    parser.add_argument("--listen-port", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=16, help="submissions in flight at once (default 16)")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    setup_logging(os.environ.get("LOG_LEVEL", "INFO"), args.log_format)
    simulator = Simulator(args.server_url, args.username, read_password(args.password_file), args.advertise_url,
                          args.queue, args.concurrency)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(simulator, args.listen_host, args.listen_port))


if __name__ == "__main__":
    main()
