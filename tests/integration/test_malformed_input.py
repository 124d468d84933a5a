"""Malformed input of every kind gets a clear error (in the envelope where the protocol has one),
never a 500, and loses nothing: a valid submission before and after the garbage still flows."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests

from tests.integration.clients import GRADE, GraderClient, LMSClient
from xqueue_server.testing import FakeLMS, ServerThread

LMS_AUTH = ("lms", "lms-password")


def bad_requests(queue: str, callback: str) -> list[tuple[str, str, dict[str, Any]]]:
    good_header = json.dumps({"lms_callback_url": callback, "lms_key": "k", "queue_name": queue})
    return [
        # submit
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": "{", "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": "null", "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": "\"a string\"", "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": "[" * 100000, "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": json.dumps(
            {"lms_callback_url": 5, "lms_key": "k", "queue_name": queue}), "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": json.dumps(
            {"lms_callback_url": callback, "lms_key": "k", "queue_name": {"a": 1}}), "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": json.dumps(
            {"lms_callback_url": "javascript:alert(1)", "lms_key": "k", "queue_name": queue}),
            "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": good_header, "xqueue_body": "x" * 3_000_000}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": good_header, "xqueue_body": "nul\x00byte"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": 1, "submission_key": "k\x00"}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/login/", {"data": {"username": "lms\x00", "password": "lms-password"}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": "h" * 100_000, "xqueue_body": ""}}),
        ("POST", "/xqueue/submit/", {"data": b"\xff\xfe\x00garbage",
                                     "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
        ("POST", "/xqueue/submit/", {"data": b"--xx\r\nnonsense",
                                     "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}),
        ("POST", "/xqueue/submit/", {"data": b"{}", "headers": {"Content-Type": "application/json"}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": good_header, "xqueue_body": ""},
                                     "files": {"big.bin": b"0" * 4_100_000}}),
        ("POST", "/xqueue/submit/", {"data": {"xqueue_header": good_header, "xqueue_body": ""},
                                     "files": {f"f{i}.txt": b"x" for i in range(25)}}),
        ("PUT", "/xqueue/submit/", {"data": {"xqueue_header": good_header, "xqueue_body": ""}}),
        ("DELETE", "/xqueue/submit/", {}),
        # put_result
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": "{", "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": [1], "submission_key": "k"}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": 10**30, "submission_key": "k"}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": -5, "submission_key": "k"}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": 1.5, "submission_key": "k"}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": True, "submission_key": "k"}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"xqueue_header": json.dumps(
            {"submission_id": 1, "submission_key": None}), "xqueue_body": "{}"}}),
        ("POST", "/xqueue/put_result/", {"data": {"results": "not json"}}),
        ("POST", "/xqueue/put_result/", {"data": {"results": json.dumps({"a": 1})}}),
        ("POST", "/xqueue/put_result/", {"data": {"results": json.dumps([1, "x", None])}}),
        ("POST", "/xqueue/put_result/", {"data": b"\x00\x01", "headers": {"Content-Type": "multipart/form-data"}}),
        # pulls
        ("GET", "/xqueue/get_submission/", {"params": {"queue_name": queue, "max": "lots"}}),
        ("GET", "/xqueue/get_submission/", {"params": {"queue_name": queue, "wait": "inf", "max": "0"}}),
        ("GET", "/xqueue/get_submission/", {"params": {"queue_name": "\x00" * 10}}),
        ("GET", "/xqueue/get_submission/", {"params": {"queue_name": "q" * 100_00}}),
        ("POST", "/xqueue/get_submission/", {"params": {"queue_name": queue}}),
        ("POST", "/xqueue/get_queuelen/", {"params": {"queue_name": queue}}),
        ("GET", "/xqueue/get_queuelen/", {"params": {"queue_name": "'; DROP TABLE submissions; --"}}),
        # login
        ("POST", "/xqueue/login/", {"data": {"username": "x" * 100_000, "password": "y"}}),
        ("POST", "/xqueue/login/", {"data": b"\xff\xff", "headers": {"Content-Type": "multipart/form-data"}}),
        ("POST", "/xqueue/login/", {"data": {"username": ["a", "b"], "password": "p"}}),
    ]


def test_malformed_requests_never_cause_a_500_and_lose_nothing(xqueue: ServerThread, queue_name: str,
                                                               fake_lms: FakeLMS) -> None:
    lms = LMSClient(xqueue)
    before_key, _ = lms.submit(queue_name, fake_lms.callback_url("before"), "before")
    session = requests.Session()
    session.auth = LMS_AUTH
    for method, path, kwargs in bad_requests(queue_name, fake_lms.callback_url("bad")):
        response = session.request(method, f"{xqueue.url}{path}", allow_redirects=False, timeout=30, **kwargs)
        assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
        if response.status_code == 200:
            reply = response.json()
            if isinstance(reply["content"], list):  # bulk put_result: one envelope per item
                assert all(item["return_code"] == 1 for item in reply["content"]), (method, path, reply)
                continue
            assert reply["return_code"] == 1, (method, path, reply)
            assert isinstance(reply["content"], str) and reply["content"], (method, path, reply)
    after_key, (code, length) = lms.submit(queue_name, fake_lms.callback_url("after"), "after")
    assert (code, length) == (0, "2")  # nothing the garbage did added or removed work
    grader = GraderClient(xqueue)
    for _ in range(2):
        item = grader.pull(queue_name)
        assert item is not None
        grader.put_result(item["xqueue_header"], GRADE)
    fake_lms.wait_for(lambda cbs: {c.xqueue_header["lms_key"] for c in cbs} >= {before_key, after_key})


def test_file_too_large_is_a_clear_envelope_error(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(max_file_bytes=1000, max_request_bytes=5000)
    lms = LMSClient(server)
    header = {"lms_callback_url": fake_lms.callback_url("f"), "lms_key": "k", "queue_name": "test-pull"}
    code, content = lms.send(header, "", files={"big.py": b"x" * 1001})
    assert (code, content) == (1, "File 'big.py' is larger than 1000 bytes")
    code, content = lms.send(header, "", files={f"f{i}.py": b"x" * 900 for i in range(6)})
    assert (code, content) == (1, "Request is larger than 5000 bytes")
    assert lms.send(header, "", files={"ok.py": b"x" * 1000}) == (0, "1")


def test_raw_garbage_on_the_socket_does_not_break_the_server(xqueue: ServerThread) -> None:
    host, port = xqueue.url.removeprefix("http://").split(":")
    for payload in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"GET / HTTP/9.9\r\n\r\n",
                    b"POST /xqueue/submit/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            try:
                sock.recv(1024)
            except TimeoutError:
                pass
    assert requests.get(f"{xqueue.url}/xqueue/status/", timeout=10).json()["content"] == "OK"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_unsupported_methods_on_ops_endpoints_are_405(xqueue: ServerThread, method: str) -> None:
    response = requests.request(method, f"{xqueue.url}/healthz", timeout=10)
    assert response.status_code == 405
