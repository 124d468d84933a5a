"""``make run``: the whole job on one machine.

Starts a throwaway PostgreSQL (under ``.local/``), the XQueue server on 127.0.0.1:18040, a grader
daemon for the example course (``examples/course``), and a fake LMS; then submits a correct, an
incorrect and a broken solution the way the LMS does, waits for the three callbacks and prints the
results. The stack keeps running for your own submissions until Ctrl-C (``--once`` exits instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from .config import load_settings
from .local_pg import LocalPostgres
from .testing import FakeLMS, ServerThread

REPO = Path(__file__).resolve().parent.parent
QUEUE = "demo-course"
DEMO_PROBLEM = "hello_function"  # examples/course/<problem>/ with its grader and answer.py


@dataclasses.dataclass(frozen=True)
class DemoSubmission:
    label: str
    code: str


SUBMISSIONS = [
    DemoSubmission("correct", "def hello(name):\n    return 'Hello, ' + name + '!'\n"),
    DemoSubmission("incorrect", "def hello(name):\n    return 'Hi ' + name\n"),
    DemoSubmission("broken", "def hello(name)\n    return name\n"),
]


def readable(msg: str) -> str:
    """A terminal rendering of the grader's HTML message."""
    text = re.sub(r"<(br|/p|/h4|/dt|/dd|/li|/div|header|/header)[^>]*>", "\n", msg)
    text = re.sub(r"<[^>]+>", "", text)
    lines = [html.unescape(line).rstrip() for line in text.splitlines()]
    return "\n".join("      " + line for line in lines if line.strip())


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


def submit(lms_session: requests.Session, server: ServerThread, lms: FakeLMS, code: str) -> str:
    key = uuid.uuid4().hex
    header = {"lms_callback_url": lms.callback_url(key), "lms_key": key, "queue_name": QUEUE}
    body = {
        "grader_payload": json.dumps({"grader": f"{DEMO_PROBLEM}/grade_{DEMO_PROBLEM}.py"}),
        "student_info": json.dumps({"anonymous_student_id": "demo-student", "submission_time": "20261125000000",
                                    "random_seed": 1}),
        "student_response": code,
    }
    data = {"xqueue_header": json.dumps(header), "xqueue_body": json.dumps(body)}
    for _attempt in range(2):  # like the LMS: log in on login_required, then retry once
        reply = lms_session.post(f"{server.url}/xqueue/submit/", data=data, timeout=10).json()
        if reply == {"return_code": 1, "content": "login_required"}:
            lms_session.post(f"{server.url}/xqueue/login/",
                             data={"username": server.lms.username, "password": server.lms.password}, timeout=10)
            continue
        if reply["return_code"] != 0:
            raise RuntimeError(f"submit failed: {reply['content']}")
        return key
    raise RuntimeError("could not log in as the LMS")


def run_demo(once: bool, port: int) -> int:
    settings = load_settings()
    state = Path(settings.local_state_dir).absolute()
    state.mkdir(parents=True, exist_ok=True)
    pg = LocalPostgres(state / "postgres")
    pg.start()
    server: ServerThread | None = None
    lms: FakeLMS | None = None
    grader: subprocess.Popen[bytes] | None = None
    try:
        print(f"PostgreSQL (throwaway) ........ {pg.url}  (data in {pg.data_dir})")
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
        session = requests.Session()
        keys = {}
        for item in SUBMISSIONS:
            keys[submit(session, server, lms, item.code)] = item
            time.sleep(0.05)  # distinct callback URLs, but keep arrival order readable
        print(f"\nsubmitted {len(keys)} solutions to problem '{DEMO_PROBLEM}' the way the LMS does; waiting...\n")
        callbacks = lms.wait_for(lambda cbs: {c.xqueue_header["lms_key"] for c in cbs} >= set(keys), timeout=60)
        by_key = {c.xqueue_header["lms_key"]: c for c in callbacks}
        for key, item in keys.items():
            body: Any = by_key[key].xqueue_body
            print(f"  [{item.label}] score={body['score']} correct={body['correct']}")
            print(readable(body["msg"]))
            print()
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
