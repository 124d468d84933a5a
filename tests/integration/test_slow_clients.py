"""Slow clients (slowloris): raw sockets that dribble a request byte by byte are cut off after
XQUEUE_HEADER_TIMEOUT_SECONDS (headers, idle connections) or XQUEUE_BODY_TIMEOUT_SECONDS (body),
while slow-but-finished requests and long-polls are served as usual."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
import requests

from xqueue_server.testing import ServerThread

TIMEOUTS = {"header_timeout_seconds": 2.0, "body_timeout_seconds": 2.0}


@pytest.fixture
def server(xqueue_factory: Callable[..., ServerThread]) -> ServerThread:
    return xqueue_factory(**TIMEOUTS)


def connect(server: ServerThread) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def dribble_until_closed(sock: socket.socket, data: bytes, interval: float, limit: float) -> tuple[float, bytes]:
    """Send ``data`` one byte per ``interval`` until the server answers or closes; (seconds until the
    answer or the close, what it sent up to its close)."""
    started = time.monotonic()
    answered = None
    received = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                answered = time.monotonic() - started
                break
        if time.monotonic() - started > limit:
            break
    sock.settimeout(max(0.1, limit - (time.monotonic() - started)))
    try:
        while chunk := sock.recv(65536):  # the rest of the answer, up to the close
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return answered if answered is not None else time.monotonic() - started, received


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_headers_that_arrive_too_slowly_are_cut_off(server: ServerThread) -> None:
    with connect(server) as sock:
        request = b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n"
        elapsed, received = dribble_until_closed(sock, request, 0.2, limit=10)
        assert received == b"" and elapsed < 5, (elapsed, received)


def test_an_idle_connection_is_closed(server: ServerThread) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert closed_within(sock, 8)
        assert time.monotonic() - started < 5
    with connect(server) as sock:  # also after a first request on a keep-alive connection
        sock.sendall(b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        assert b'"content": "OK"' in sock.recv(65536)
        started = time.monotonic()
        assert closed_within(sock, 8)
        assert time.monotonic() - started < 5


def post_head(server: ServerThread, path: str, length: int, content_type: str) -> bytes:
    account = server.admin if path.startswith("/api/") else server.grader
    credentials = base64.b64encode(f"{account.username}:{account.password}".encode()).decode()
    method = "PUT" if path.startswith("/api/") else "POST"
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("path, content_type", [
    ("/xqueue/put_result/", "application/x-www-form-urlencoded"),
    ("/xqueue/submit/", "multipart/form-data; boundary=xx"),
    ("/api/v1/users/someone", "application/json"),
])
def test_a_body_that_arrives_too_slowly_is_answered_408(server: ServerThread, path: str, content_type: str) -> None:
    body = b"-" * 400
    with connect(server) as sock:
        sock.sendall(post_head(server, path, len(body), content_type))
        started = time.monotonic()
        elapsed, received = dribble_until_closed(sock, body, 0.1, limit=30)
        # After the answer aiohttp still drains ("lingers" on) the body for at most 10 s, then closes.
        assert closed_within(sock, 15) and time.monotonic() - started < 15
    assert received.startswith(b"HTTP/1.1 408 "), received[:200]
    assert 1.5 < elapsed < 5
    assert b"Connection: close" in received
    assert b"Request body did not arrive in time" in received
    if path.startswith("/xqueue/"):
        assert b'"return_code": 1' in received
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert re.search(r"^xqueue_slow_requests_total 1\.0$", metrics, re.M)


def test_slow_but_complete_requests_and_long_polls_are_served(server: ServerThread) -> None:
    body = b"xqueue_header=%7B%7D&xqueue_body=x"
    with connect(server) as sock:
        sock.sendall(post_head(server, "/xqueue/put_result/", len(body), "application/x-www-form-urlencoded"))
        _elapsed, received = dribble_until_closed(sock, body, 0.03, limit=10)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert b"Incorrect reply format" in received
    # A long-poll outlasts both timeouts: only the arrival of the request is bounded, not the work.
    started = time.monotonic()
    params: dict[str, str | int] = {"queue_name": "test-pull", "wait": 3}
    reply = requests.get(f"{server.url}/xqueue/get_submission/", params=params,
                         auth=(server.grader.username, server.grader.password), timeout=30)
    assert reply.json() == {"return_code": 1, "content": "Queue 'test-pull' is empty"}
    assert time.monotonic() - started >= 2.9


@pytest.fixture
def many_slow_sockets(server: ServerThread) -> Iterator[list[socket.socket]]:
    sockets = [connect(server) for _ in range(50)]
    yield sockets
    for sock in sockets:
        sock.close()


def test_many_dribbling_connections_do_not_stay(server: ServerThread, many_slow_sockets: list[socket.socket]) -> None:
    for sock in many_slow_sockets:
        sock.sendall(b"GET /xqueue/status/ HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    # Served meanwhile, and every slow connection closed by the server soon after the header timeout.
    assert requests.get(f"{server.url}/xqueue/status/", timeout=10).json()["content"] == "OK"
    deadline = time.monotonic() + 6
    assert all(closed_within(sock, max(0.1, deadline - time.monotonic())) for sock in many_slow_sockets)


def multipart_submit_head(server: ServerThread, username: str, password: str, queue: str,
                          file_bytes: int) -> tuple[bytes, bytes, int]:
    """(request head, the body's first part up to the file's content, total Content-Length) of an
    LMS-style multipart submit whose header part comes first, as the LMS sends it."""
    header = json.dumps({"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": "k", "queue_name": queue})
    start = (f'--bnd\r\nContent-Disposition: form-data; name="xqueue_header"\r\n\r\n{header}\r\n'
             f'--bnd\r\nContent-Disposition: form-data; name="xqueue_body"\r\n\r\n{{}}\r\n'
             f'--bnd\r\nContent-Disposition: form-data; name="code.py"; filename="code.py"\r\n\r\n').encode()
    length = len(start) + file_bytes + len(b"\r\n--bnd--\r\n")
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
    head = (f"POST /xqueue/submit/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n"
            f"Content-Type: multipart/form-data; boundary=bnd\r\nContent-Length: {length}\r\n\r\n").encode()
    return head, start, length


def answer_without_the_rest(server: ServerThread, head: bytes, start: bytes) -> tuple[float, bytes]:
    """Send the head and the start of a large body, then wait: (seconds to the answer, the answer)."""
    with connect(server) as sock:
        sock.sendall(head + start + b"x" * 65536)
        started = time.monotonic()
        sock.settimeout(10)
        received = b""
        try:
            while b"}" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        return time.monotonic() - started, received


def test_submit_checks_the_queue_right_before_reading_the_files(server: ServerThread) -> None:
    """A 15 MB submission to a queue the account may not use (or that does not exist) is refused as
    soon as its header part has arrived, not after the files (nor after the body timeout)."""
    api = requests.Session()
    api.auth = (server.admin.username, server.admin.password)
    assert api.put(f"{server.url}/api/v1/queues/other", timeout=10).status_code == 201
    assert api.put(f"{server.url}/api/v1/users/lms-one", json={
        "password": "lms-one-password", "submit_queues": ["test-pull"], "pull_queues": []}, timeout=10).ok
    for queue in ("other", "does-not-exist"):
        head, start, _length = multipart_submit_head(server, "lms-one", "lms-one-password", queue, 15_000_000)
        elapsed, received = answer_without_the_rest(server, head, start)
        assert received.startswith(b"HTTP/1.1 200 "), received[:300]
        assert received.endswith(json.dumps({"return_code": 1, "content": f"Queue '{queue}' not found"}).encode())
        assert elapsed < 1.5  # the body timeout is 2 s: this answer did not wait for it
    # An account that may submit nowhere is refused before any of the body is read.
    assert api.put(f"{server.url}/api/v1/users/pull-only", json={
        "password": "pull-only-password", "submit_queues": [], "pull_queues": ["test-pull"]}, timeout=10).ok
    head, start, _length = multipart_submit_head(server, "pull-only", "pull-only-password", "test-pull", 15_000_000)
    elapsed, received = answer_without_the_rest(server, head, b"")
    assert received.endswith(b'{"return_code": 1, "content": "This account may not submit to any queue"}')
    assert elapsed < 1.5
    # The allowed queue still takes the whole submission.
    lms = requests.post(f"{server.url}/xqueue/submit/", auth=("lms-one", "lms-one-password"), timeout=30, data={
        "xqueue_header": json.dumps({"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": "k",
                                     "queue_name": "test-pull"}), "xqueue_body": "{}"},
        files={"code.py": b"print(1)"})
    assert lms.json() == {"return_code": 0, "content": "1"}


def test_submit_caps_the_number_of_multipart_parts(server: ServerThread) -> None:
    header = json.dumps({"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": "k", "queue_name": "test-pull"})
    fields = [("xqueue_header", (None, header)), ("xqueue_body", (None, "{}"))]
    extra = [(f"extra-{i}", (None, "x")) for i in range(server.settings.max_files + 9)]
    auth = (server.lms.username, server.lms.password)
    reply = requests.post(f"{server.url}/xqueue/submit/", files=fields + extra, auth=auth, timeout=30).json()
    expected = f"more than {server.settings.max_files + 10} form parts"
    assert reply == {"return_code": 1, "content": expected}
    ok = requests.post(f"{server.url}/xqueue/submit/", files=fields + extra[:-1], auth=auth, timeout=30).json()
    assert ok["return_code"] == 0, ok
