"""The ``make run`` demo against an XQueue server in a cluster (``make kind-demo`` runs it as a Job).

Starts a callback receiver like the LMS's (``FakeLMS``) on ``0.0.0.0:--listen-port`` that the server
reaches at ``--advertise-host`` (default: the ``POD_IP`` environment variable, set from the downward
API), submits the correct, incorrect and broken solutions of ``make run`` to ``--queue`` the way the
LMS does, waits for the three grades and prints them as ``make run`` does.

Exit status 0 only when the correct solution scored 1 (correct=True) and the other two were graded
not correct; 1 otherwise (including no grade within ``--timeout`` seconds, which also bounds the
retries while the server is not reachable yet).
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import sys
import time
from typing import NoReturn

from .demo import DEMO_PROBLEM, QUEUE, LmsClient, check_results, print_results, submit_solutions, wait_for_results
from .testing import FakeLMS


def default_advertise_host() -> str:
    """The pod IP from the downward API, else this host's address."""
    pod_ip = os.environ.get("POD_IP", "").strip()
    if pod_ip:
        return pod_ip
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def read_password(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        password = fh.read().rstrip("\r\n")
    if not password:
        raise SystemExit(f"cluster_demo: the password file {path} is empty")
    return password


def _terminate(signum: int, _frame: object) -> NoReturn:
    # PID 1 in a container ignores SIGTERM without a handler: exit (and clean up) on the Job's deadline.
    raise SystemExit(128 + signum)


def run(server_url: str, queue: str, username: str, password: str, listen_port: int, advertise_host: str,
        timeout: float) -> int:
    started = time.monotonic()
    lms = FakeLMS(host="0.0.0.0", port=listen_port, advertise_host=advertise_host)
    try:
        print(f"XQueue server ................. {server_url}   queue: {queue}   account: {username}")
        print(f"fake LMS ...................... listening on 0.0.0.0:{lms.port}, callbacks to {lms.url}")
        client = LmsClient(server_url, username, password)
        try:
            keys = submit_solutions(client, lms.callback_url, queue=queue, retry_seconds=timeout)
        except (OSError, http.client.HTTPException, RuntimeError) as exc:
            print(f"\ncould not submit to {server_url}: {exc}", file=sys.stderr)
            return 1
        remaining = max(1.0, timeout - (time.monotonic() - started))
        print(f"\nsubmitted {len(keys)} solutions to problem '{DEMO_PROBLEM}' the way the LMS does; "
              f"waiting (at most {remaining:.0f} s)...\n", flush=True)
        results = wait_for_results(lms, keys, timeout=remaining)
        print_results(results)
        problems = check_results(results)
        if problems:
            print("demo FAILED: " + "; ".join(problems), file=sys.stderr)
            return 1
        print(f"demo passed: the three solutions were graded as expected in {time.monotonic() - started:.1f} s")
        return 0
    finally:
        lms.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xqueue_server.cluster_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server-url", required=True,
                        help="XQueue base URL, e.g. http://xqueue-server.xqueue.svc:18040")
    parser.add_argument("--queue", default=QUEUE, help=f"queue to submit to (default {QUEUE})")
    parser.add_argument("--username", default="lms", help="the LMS's XQueue account (default lms)")
    parser.add_argument("--password-file", required=True, help="file holding that account's password")
    parser.add_argument("--listen-port", type=int, default=8000, help="port of the callback receiver (default 8000)")
    parser.add_argument("--advertise-host", default=None,
                        help="address the server calls back (default: $POD_IP, else this host's address)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds for everything: reaching the server and all three grades (default 300)")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    signal.signal(signal.SIGTERM, _terminate)
    raise SystemExit(run(args.server_url.rstrip("/"), args.queue, args.username, read_password(args.password_file),
                         args.listen_port, args.advertise_host or default_advertise_host(), args.timeout))


if __name__ == "__main__":
    main()
