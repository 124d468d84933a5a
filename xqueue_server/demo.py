"""``make run``: the whole job on one machine.

Starts a throwaway PostgreSQL (under ``.local/``), the XQueue server on 127.0.0.1:18040, a grader
daemon for the example course (``examples/course``), and a fake LMS; then submits a correct, an
incorrect and a broken solution the way the LMS does, waits for the three callbacks and prints the
results. The stack keeps running for your own submissions until Ctrl-C (``--once`` exits instead).

The submitting and reporting half (``LmsClient``, ``submit_solutions``, ``print_results``,
``check_results``) is shared with ``cluster_demo`` (the same demo against a server in a cluster), so
it uses the standard library only: the server image has no ``requests``.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import http.client
import http.cookiejar
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import load_settings
from .local_pg import LocalPostgres
from .testing import Callback, FakeLMS, ServerThread

REPO = Path(__file__).resolve().parent.parent
QUEUE = "demo-course"
DEMO_PROBLEM = "hello_function"  # examples/course/<problem>/ with its grader and answer.py
LOGIN_REQUIRED = {"return_code": 1, "content": "login_required"}


@dataclasses.dataclass(frozen=True)
class DemoSubmission:
    label: str
    code: str


SUBMISSIONS = [
    DemoSubmission("correct", "def hello(name):\n    return 'Hello, ' + name + '!'\n"),
    DemoSubmission("incorrect", "def hello(name):\n    return 'Hi ' + name\n"),
    DemoSubmission("broken", "def hello(name)\n    return name\n"),
]

# A graded demo submission: what was sent, and the callback's xqueue_body (None: no callback).
Result = tuple[DemoSubmission, Any]


def readable(msg: str) -> str:
    """A terminal rendering of the grader's HTML message."""
    text = re.sub(r"<(br|/p|/h4|/dt|/dd|/li|/div|header|/header)[^>]*>", "\n", msg)
    text = re.sub(r"<[^>]+>", "", text)
    lines = [html.unescape(line).rstrip() for line in text.splitlines()]
    return "\n".join("      " + line for line in lines if line.strip())


class LmsClient:
    """Talks to XQueue like edx-platform's xqueue interface: form POSTs carrying a session cookie,
    and a login (then one retry) when the server answers ``login_required``."""

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        # Follows the 302 to /xqueue/login/ like requests does (as a GET, which answers login_required).
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def post(self, path: str, data: Mapping[str, str]) -> Any:
        """POST a form; returns the decoded JSON reply. Raises ``urllib.error.URLError`` (an
        ``OSError``) or ``http.client.HTTPException`` when the server cannot be reached."""
        request = urllib.request.Request(self.base_url + path, data=urllib.parse.urlencode(data).encode())
        with self._opener.open(request, timeout=self.timeout) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            raise RuntimeError(f"{path}: not a JSON reply: {body[:200]!r}") from None

    def login(self) -> None:
        reply = self.post("/xqueue/login/", {"username": self.username, "password": self.password})
        if not isinstance(reply, dict) or reply.get("return_code") != 0:
            raise RuntimeError(f"login as {self.username!r} failed: {reply}")

    def submit(self, header: Mapping[str, Any], body: Mapping[str, Any]) -> None:
        data = {"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)}
        for _attempt in range(2):  # like the LMS: log in on login_required, then retry once
            reply = self.post("/xqueue/submit/", data)
            if reply == LOGIN_REQUIRED:
                self.login()
                continue
            if not isinstance(reply, dict) or reply.get("return_code") != 0:
                raise RuntimeError(f"submit failed: {reply.get('content') if isinstance(reply, dict) else reply}")
            return
        raise RuntimeError(f"could not log in as {self.username!r}")


def submit(client: LmsClient, code: str, callback_url: Callable[[str], str], queue: str = QUEUE) -> str:
    """Submit one solution of the demo problem the way the LMS does; returns its ``lms_key``.

    ``callback_url(key)`` is the LMS URL the server calls back with the grade.
    """
    key = uuid.uuid4().hex
    header = {"lms_callback_url": callback_url(key), "lms_key": key, "queue_name": queue}
    body = {
        "grader_payload": json.dumps({"grader": f"{DEMO_PROBLEM}/grade_{DEMO_PROBLEM}.py"}),
        "student_info": json.dumps({"anonymous_student_id": "demo-student", "submission_time": "20261125000000",
                                    "random_seed": 1}),
        "student_response": code,
    }
    client.submit(header, body)
    return key


def _retryable(exc: Exception) -> bool:
    """Connection trouble (the server may still be starting), not an answer of the server."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    return isinstance(exc, OSError | http.client.HTTPException)


def submit_solutions(client: LmsClient, callback_url: Callable[[str], str], queue: str = QUEUE,
                     retry_seconds: float = 0.0) -> dict[str, DemoSubmission]:
    """Submit ``SUBMISSIONS`` in order; returns ``{lms_key: submission}``.

    Connection errors and 5xx answers are retried every 2 s for up to ``retry_seconds`` in total
    (a fresh key per attempt, so a submission that did arrive is simply never awaited).
    """
    deadline = time.monotonic() + retry_seconds
    keys: dict[str, DemoSubmission] = {}
    for item in SUBMISSIONS:
        while True:
            try:
                keys[submit(client, item.code, callback_url, queue)] = item
                break
            except (OSError, http.client.HTTPException) as exc:
                if not _retryable(exc) or time.monotonic() + 2 > deadline:
                    raise
                print(f"  XQueue at {client.base_url} not reachable yet ({exc}); retrying in 2 s", flush=True)
                time.sleep(2)
        time.sleep(0.05)  # distinct callback URLs, but keep arrival order readable
    return keys


def wait_for_results(lms: FakeLMS, keys: Mapping[str, DemoSubmission], timeout: float) -> list[Result]:
    """Wait up to ``timeout`` s for a callback per key; results in submission order (body None: none came)."""
    try:
        lms.wait_for(lambda cbs: {c.xqueue_header.get("lms_key") for c in cbs} >= set(keys), timeout=timeout)
    except TimeoutError:
        pass
    by_key: dict[str, Callback] = {}
    for callback in list(lms.callbacks):
        by_key.setdefault(str(callback.xqueue_header.get("lms_key")), callback)
    return [(item, by_key[key].xqueue_body if key in by_key else None) for key, item in keys.items()]


def print_results(results: Sequence[Result]) -> None:
    for item, body in results:
        if isinstance(body, dict):
            print(f"  [{item.label}] score={body.get('score')} correct={body.get('correct')}")
            print(readable(str(body.get("msg", ""))))
        else:
            print(f"  [{item.label}] no grade received" + (f": {body!r}" if body is not None else ""))
        print()


def check_results(results: Sequence[Result]) -> list[str]:
    """What is wrong with the graded demo: [] when the correct solution scored 1 (correct=True) and
    the incorrect and broken ones were graded not correct."""
    problems = []
    for item, body in results:
        if not isinstance(body, dict):
            problems.append(f"{item.label}: no grade received")
            continue
        correct, score = body.get("correct"), body.get("score")
        if item.label == "correct":
            if correct is not True or not isinstance(score, int | float) or score != 1:
                problems.append(f"correct: expected score=1 correct=True, got score={score} correct={correct}")
        elif correct is not False:
            problems.append(f"{item.label}: expected correct=False, got correct={correct}")
    return problems


def grader_command() -> list[str]:
    return [sys.executable, "-m", "xqueue_grader", "run"]


def start_grader(server: ServerThread, grader_root: Path, state: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "XQGRADER_SERVER_URL": server.url,
        "XQGRADER_QUEUE": QUEUE,
        "XQGRADER_USERNAME": server.grader.username,
        "XQGRADER_PASSWORD": server.grader.password,
        "XQGRADER_GRADER_ROOT": str(grader_root),
        "XQGRADER_SLOTS": "2",
        "XQGRADER_HTTP_PORT": "0",
    }
    log = open(state / "grader.log", "ab")
    return subprocess.Popen(grader_command(), env=env, stdout=log, stderr=log, cwd=REPO)


def run_demo(once: bool, port: int) -> int:
    settings = load_settings()
    state = Path(settings.local_state_dir).absolute()
    state.mkdir(parents=True, exist_ok=True)
    pg = LocalPostgres(state / "postgres", durable=settings.local_durability == "durable")
    pg.start()
    server: ServerThread | None = None
    lms: FakeLMS | None = None
    grader: subprocess.Popen[bytes] | None = None
    try:
        print(f"PostgreSQL (throwaway) ........ {pg.url}  (data in {pg.data_dir}, {settings.local_durability})")
        server = ServerThread.start(pg.url, queues=(QUEUE,), port=port, storage_dir=str(state / "files"))
        print(f"XQueue server ................. {server.url}   queue: {QUEUE}")
        print(f"  accounts: {server.lms.username}/{server.lms.password} (LMS), "
              f"{server.grader.username}/{server.grader.password} (grader), "
              f"{server.admin.username}/{server.admin.password} (admin)")
        lms = FakeLMS()
        print(f"fake LMS ...................... {lms.url}")
        grader_root = REPO / "examples" / "course"
        grader = start_grader(server, grader_root, state)
        print(f"grader daemon ................. pid {grader.pid}, course {grader_root}, log {state / 'grader.log'}")
        client = LmsClient(server.url, server.lms.username, server.lms.password)
        keys = submit_solutions(client, lms.callback_url)
        print(f"\nsubmitted {len(keys)} solutions to problem '{DEMO_PROBLEM}' the way the LMS does; waiting...\n")
        results = wait_for_results(lms, keys, timeout=60)
        print_results(results)
        if any(body is None for _item, body in results):
            print("not every solution was graded within 60 s; see the grader log", file=sys.stderr)
            return 1
        if once:
            return 0
        body_file = state / "example_body.json"
        body_file.write_text(json.dumps({
            "grader_payload": json.dumps({"grader": f"{DEMO_PROBLEM}/grade_{DEMO_PROBLEM}.py"}),
            "student_response": SUBMISSIONS[0].code,
        }))
        header = json.dumps({"lms_callback_url": lms.callback_url("mine"), "lms_key": "my-key", "queue_name": QUEUE})
        print("The stack keeps running; grades of further submissions are printed here. Try:")
        print(f"  curl -s -c /tmp/xq -d 'username=lms&password=lms-password' {server.url}/xqueue/login/")
        print(f"  curl -s -b /tmp/xq --data-urlencode 'xqueue_header={header}' "
              f"--data-urlencode 'xqueue_body@{body_file}' {server.url}/xqueue/submit/")
        print("Ctrl-C stops everything.")
        stop = {"now": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
        shown = len(lms.callbacks)
        try:
            while not stop["now"]:
                time.sleep(0.5)
                for callback in list(lms.callbacks)[shown:]:
                    body = callback.xqueue_body
                    if isinstance(body, dict):
                        print(f"  [{callback.xqueue_header.get('lms_key')}] score={body.get('score')} "
                              f"correct={body.get('correct')}")
                        print(readable(str(body.get("msg", ""))))
                shown = len(lms.callbacks)
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        if grader is not None:
            grader.send_signal(signal.SIGTERM)
            try:
                grader.wait(timeout=30)
            except subprocess.TimeoutExpired:
                grader.kill()
        if lms is not None:
            lms.stop()
        if server is not None:
            server.stop()
        pg.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xqueue_server.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--once", action="store_true", help="exit after printing the three results")
    parser.add_argument("--port", type=int, default=int(os.environ.get("XQUEUE_PORT", "18040")))
    parser.add_argument("--reset", action="store_true", help="throw away .local (database and files) first")
    args = parser.parse_args(argv)
    if args.reset:
        shutil.rmtree(load_settings().local_state_dir, ignore_errors=True)
    raise SystemExit(run_demo(args.once, args.port))


if __name__ == "__main__":
    main()
