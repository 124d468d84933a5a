"""Malformed input of every kind gets a clear error (in the envelope where the protocol has one),
never a 500, and loses nothing: a valid submission before and after the garbage still flows."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import asyncpg
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


# ---------------------------------------------------------------------------------------------------------------
# One test per class of input the security review found answered with HTTP 500. Each sends the input over real
# HTTP and requires a clear error in the route's format (envelope with return_code 1, or a JSON 4xx error).

FORM = "application/x-www-form-urlencoded"


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"XQB") -> tuple[bytes, dict[str, str]]:
    """A multipart body built byte by byte, so tests can send headers no client library would."""
    body = b"".join(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n" for headers, value in parts)
    body += b"--" + boundary + b"--\r\n"
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}


def field(name: str, value: bytes, extra: bytes = b"") -> tuple[bytes, bytes]:
    return b'Content-Disposition: form-data; name="' + name.encode() + b'"' + extra, value


def envelope_error(response: requests.Response) -> str:
    """The content of a classic-route error: HTTP 200 and return_code 1, like upstream."""
    assert response.status_code == 200, (response.status_code, response.text[:300])
    reply = response.json()
    assert reply["return_code"] == 1 and isinstance(reply["content"], str), reply
    return reply["content"]


def json_error(response: requests.Response, status: int = 400) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    return response.json()["error"]


def good_cycle_still_works(server: ServerThread, queue: str, fake_lms: FakeLMS) -> None:
    lms = LMSClient(server)
    key, (code, _) = lms.submit(queue, fake_lms.callback_url("after-garbage"), "after", files={"a.py": b"ok"})
    assert code == 0
    grader = GraderClient(server)
    item = grader.pull(queue)
    assert item is not None and item["xqueue_body"] == "after"
    assert requests.get(json.loads(item["xqueue_files"])["a.py"], timeout=10).content == b"ok"
    assert grader.put_result(item["xqueue_header"], GRADE)["return_code"] == 0
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs))


# Python codecs that are not charsets (unicode_escape turns "\ud800" into a lone surrogate, rot13 and hex are
# bytes-to-text transforms), a real text encoding we do not allow, and names that are no codec at all.
EXOTIC_CHARSETS = ["unicode_escape", "raw-unicode-escape", "rot13", "hex", "base64", "zlib", "idna", "punycode",
                   "undefined", "utf-7", "bogus", "x" * 300]


@pytest.mark.parametrize("charset", EXOTIC_CHARSETS)
def test_exotic_charsets_are_refused_on_every_body(xqueue: ServerThread, queue_name: str, charset: str) -> None:
    header = json.dumps({"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": "k", "queue_name": queue_name})
    urlencoded = {"Content-Type": f"{FORM}; charset={charset}"}
    lms = requests.Session()
    lms.auth = LMS_AUTH
    for path, body in (("/xqueue/login/", b"username=lms&password=lms-password"),
                       ("/xqueue/submit/", b"xqueue_header=" + header.encode() + b"&xqueue_body=%5Cud800"),
                       ("/xqueue/put_result/", b"xqueue_header=%7B%7D&xqueue_body=x")):
        content = envelope_error(lms.post(f"{xqueue.url}{path}", data=body, headers=urlencoded, timeout=10))
        assert "unsupported charset" in content, (path, content)
    part = b"\r\nContent-Type: text/plain; charset=" + charset.encode()
    for path, parts in (
        ("/xqueue/submit/", [field("xqueue_header", header.encode(), part), field("xqueue_body", b"\\ud800")]),
        ("/xqueue/login/", [field("username", b"lms", part), field("password", b"lms-password")]),
        ("/xqueue/put_result/", [field("xqueue_header", b"{}", part), field("xqueue_body", b"x")]),
    ):
        body, headers = multipart(parts)
        content = envelope_error(lms.post(f"{xqueue.url}{path}", data=body, headers=headers, timeout=10))
        assert "unsupported charset" in content, (path, content)
    # The charset of an RFC 2231 file name (name*=charset''...) is a part's charset too.
    body, headers = multipart([field("xqueue_header", header.encode()), field("xqueue_body", b""),
                               (b"Content-Disposition: form-data; name*=" + charset.encode() + b"''a.py; filename=f",
                                b"code")])
    content = envelope_error(lms.post(f"{xqueue.url}/xqueue/submit/", data=body, headers=headers, timeout=10))
    assert "unsupported charset" in content, content
    admin = requests.put(f"{xqueue.url}/api/v1/users/charset-user", data=b'{"password": "\\\\ud800-long-enough"}',
                         headers={"Content-Type": f"application/json; charset={charset}"},
                         auth=(xqueue.admin.username, xqueue.admin.password), timeout=10)
    assert "unsupported charset" in json_error(admin)
    assert GraderClient(xqueue).queue_length(queue_name) == {"return_code": 0, "content": 0}


def test_real_text_charsets_still_decode(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    header = json.dumps({"lms_callback_url": fake_lms.callback_url("latin"), "lms_key": "k", "queue_name": queue_name})
    body = b"xqueue_header=" + header.encode() + b"&xqueue_body=caf%E9+cr\xe8me"
    response = requests.post(f"{xqueue.url}/xqueue/submit/", data=body, auth=LMS_AUTH, timeout=10,
                             headers={"Content-Type": f"{FORM}; charset=ISO-8859-1"})
    assert response.json() == {"return_code": 0, "content": "1"}
    item = GraderClient(xqueue).pull(queue_name)
    assert item is not None and item["xqueue_body"] == "café crème"
    utf16 = requests.put(f"{xqueue.url}/api/v1/users/utf16-user", timeout=10,
                         data=json.dumps({"password": "pässword-long"}).encode("utf-16"),
                         headers={"Content-Type": "application/json; charset=utf-16"},
                         auth=(xqueue.admin.username, xqueue.admin.password))
    assert utf16.status_code == 201, utf16.text
    assert LMSClient(xqueue, "utf16-user", "pässword-long")._login()["return_code"] == 0


def test_text_that_cannot_be_stored_is_refused(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    """Lone surrogates (JSON "\\ud800", non-UTF-8 header bytes, RFC 2231 names) and NUL never reach PostgreSQL."""
    callback = fake_lms.callback_url("s")
    lms = requests.Session()
    lms.auth = LMS_AUTH

    def submit_header(**values: str) -> str:
        return json.dumps({"lms_callback_url": callback, "lms_key": "k", "queue_name": queue_name, **values})

    for header in (submit_header(queue_name="\ud800"), submit_header(lms_callback_url=callback + "/\ud800"),
                   submit_header(lms_key="\udcff"), submit_header(lms_key="a\x00b"),
                   submit_header()[:-1] + ', "\\ud800": 1}'):
        content = envelope_error(lms.post(f"{xqueue.url}/xqueue/submit/", timeout=10,
                                          data={"xqueue_header": header, "xqueue_body": "b"}))
        assert content.startswith("Queue request has invalid format"), content
    # The percent-encoded UTF-8 form of a surrogate is not UTF-8: refused, not silently replaced.
    content = envelope_error(lms.post(f"{xqueue.url}/xqueue/submit/", headers={"Content-Type": FORM}, timeout=10,
                                      data=b"xqueue_header=%7B%7D&xqueue_body=%ED%A0%80"))
    assert "not valid utf-8 text" in content
    for key in ("\ud800", "k\x00"):
        header = json.dumps({"submission_id": 1, "submission_key": key})
        reply = lms.post(f"{xqueue.url}/xqueue/put_result/", data={"xqueue_header": header, "xqueue_body": "{}"},
                         timeout=10)
        envelope_error(reply)
    login = requests.post(f"{xqueue.url}/xqueue/login/", headers={"Content-Type": FORM}, timeout=10,
                          data=b"username=%ED%A0%80&password=%00")
    envelope_error(login)
    # Header bytes that are not UTF-8 arrive as surrogates; they must not reach hashing or the database.
    for name, value in (("X-Real-IP", b"\xff\xfe"), ("Cookie", b"sessionid=\xff\xfe"),
                        ("Authorization", b"Bearer \xff\xfe"), ("Authorization", b"Basic \xff\xfe")):
        reply = requests.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": queue_name},
                             headers={name: value}, allow_redirects=False, timeout=10)
        assert name in envelope_error(reply)
    for params in ({"queue_name": "\x00"}, {"queue_name": queue_name, "wait": "\x00"}):
        envelope_error(lms.get(f"{xqueue.url}/xqueue/get_submission/", params=params, timeout=10))
    api = requests.Session()
    api.auth = (xqueue.admin.username, xqueue.admin.password)
    for body in ('{"username": "\\ud800"}', '{"username": "lms", "pull_queues": ["\\udcff"]}',
                 '{"username": "a\\u0000"}', '{"\\ud800": 1, "username": "lms"}'):
        json_error(api.post(f"{xqueue.url}/api/v1/tokens", data=body, timeout=10))
    for body in ('{"password": "\\ud800-long-enough"}', '{"password": "long-enough\\u0000"}',
                 '{"password": "long-enough", "submit_queues": ["a\\u0000"]}'):
        json_error(api.put(f"{xqueue.url}/api/v1/users/text-user", data=body, timeout=10))
    good_cycle_still_works(xqueue, queue_name, fake_lms)


def stored_files(server: ServerThread) -> list[Path]:
    return [p for p in server.settings.resolved_storage_dir.rglob("*") if p.is_file()]


def submission_count(server: ServerThread) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(server.settings.database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM submissions"))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_unstorable_file_names_are_refused_before_anything_is_stored(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    header = json.dumps({"lms_callback_url": fake_lms.callback_url("f"), "lms_key": "k", "queue_name": "test-pull"})
    bad_names = [
        b'name*=utf-8\'\'a%00b.py; filename="a.py"',  # NUL (RFC 2231 percent-encoding)
        b'name*=unicode_escape\'\'%5Cud800.py; filename="a.py"',  # a codec that makes a lone surrogate
        b'name="\xff\xfe.py"; filename="a.py"',  # not UTF-8: a surrogate after decoding
        b'name*=utf-8\'\'a%0Ab.py; filename="a.py"',  # a control character
        b'name="' + b"n" * 300 + b'"; filename="a.py"',  # longer than a file name can be
    ]
    for disposition in bad_names:
        body, headers = multipart([field("xqueue_header", header.encode()), field("xqueue_body", b""),
                                   (b"Content-Disposition: form-data; " + disposition, b"student code")])
        reply = requests.post(f"{server.url}/xqueue/submit/", data=body, headers=headers, auth=LMS_AUTH, timeout=10)
        assert envelope_error(reply).startswith("Queue request has invalid format"), disposition
    # A good file alongside a duplicate name is refused too, and leaves nothing behind.
    body, headers = multipart([field("xqueue_header", header.encode()), field("xqueue_body", b""),
                               field("a.py", b"1", b'; filename="a.py"'), field("a.py", b"2", b'; filename="a.py"')])
    reply = requests.post(f"{server.url}/xqueue/submit/", data=body, headers=headers, auth=LMS_AUTH, timeout=10)
    assert "more than once" in envelope_error(reply)
    assert stored_files(server) == [] and submission_count(server) == 0
    assert LMSClient(server).submit("test-pull", fake_lms.callback_url("ok"), files={"ok.py": b"x"})[1] == (0, "1")
    assert len(stored_files(server)) == 1


def test_a_row_the_database_refuses_leaves_no_file(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory()

    async def refuse_marked_bodies() -> None:
        conn = await asyncpg.connect(server.settings.database_url)
        try:
            await conn.execute("""
                CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.xqueue_body = 'REFUSE' THEN RAISE EXCEPTION 'refused by a test trigger'; END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER refuse_marked BEFORE INSERT ON submissions
                    FOR EACH ROW EXECUTE FUNCTION refuse_marked();""")
        finally:
            await conn.close()

    asyncio.run(refuse_marked_bodies())
    header = json.dumps({"lms_callback_url": fake_lms.callback_url("r"), "lms_key": "k", "queue_name": "test-pull"})
    response = requests.post(f"{server.url}/xqueue/submit/", auth=LMS_AUTH, timeout=10, files={"a.py": b"never"},
                             data={"xqueue_header": header, "xqueue_body": "REFUSE"})
    # An error nobody anticipated is a server error, but a clean one: the envelope, no stack trace.
    assert response.status_code == 500 and response.json() == {"return_code": 1, "content": "Internal server error"}
    assert stored_files(server) == [] and submission_count(server) == 0


def test_a_failed_file_write_queues_nothing_and_answers_503(xqueue_factory: Any, fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    root = server.settings.resolved_storage_dir
    shutil.rmtree(root)
    root.write_bytes(b"")  # the storage folder is now a file: every write fails, for real
    try:
        response = requests.post(f"{server.url}/xqueue/submit/", auth=LMS_AUTH, timeout=10,
                                 data={"xqueue_header": json.dumps({"lms_callback_url": fake_lms.callback_url("w"),
                                                                    "lms_key": "k", "queue_name": "test-pull"}),
                                       "xqueue_body": "b"}, files={"a.py": b"code"})
        assert response.status_code == 503 and response.headers["Retry-After"].isdigit()
        assert response.json()["return_code"] == 1
        assert submission_count(server) == 0  # the row went with the failed write
    finally:
        root.unlink()
        root.mkdir()
    good_cycle_still_works(server, "test-pull", fake_lms)


def test_deeply_nested_json_is_refused(xqueue: ServerThread, queue_name: str) -> None:
    api = requests.Session()
    api.auth = (xqueue.admin.username, xqueue.admin.password)
    for body in ("[" * 200_000, '{"a":' * 100_000, '{"password": "long-enough", "x": ' + "[" * 40 + "]" * 40 + "}"):
        for method, path in (("PUT", "/api/v1/users/deep-user"), ("POST", "/api/v1/tokens")):
            assert "nested" in json_error(api.request(method, f"{xqueue.url}{path}", data=body, timeout=10))
    nested = ('{"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": ' + "[" * 40 + "]" * 40
              + ', "queue_name": "' + queue_name + '"}')
    lms = requests.Session()
    lms.auth = LMS_AUTH
    content = envelope_error(lms.post(f"{xqueue.url}/xqueue/submit/", data={"xqueue_header": nested,
                                                                             "xqueue_body": ""}, timeout=10))
    assert "nested" in content
    bulk = lms.post(f"{xqueue.url}/xqueue/put_result/", data={"results": "[" * 100_000}, timeout=10)
    assert "nested" in envelope_error(bulk)


@pytest.mark.parametrize("ttl", ["NaN", "Infinity", "-Infinity", "1e999", "1e300", str(10**40), "0", "-1", "true",
                                 '"60"', "[60]"])
def test_token_ttl_must_be_a_finite_number_in_range(xqueue: ServerThread, ttl: str) -> None:
    response = requests.post(f"{xqueue.url}/api/v1/tokens", data='{"username": "lms", "ttl_seconds": ' + ttl + "}",
                             auth=(xqueue.admin.username, xqueue.admin.password), timeout=10)
    json_error(response)


def test_numbers_out_of_range_elsewhere_are_clear_errors(xqueue: ServerThread, queue_name: str) -> None:
    ok = requests.post(f"{xqueue.url}/api/v1/tokens", json={"username": "lms", "ttl_seconds": 60.5},
                       auth=(xqueue.admin.username, xqueue.admin.password), timeout=10)
    assert ok.status_code == 201
    lms = requests.Session()
    lms.auth = LMS_AUTH
    for raw_id in ("NaN", "Infinity", "1e999", "1e30", str(10**30), '"' + "9" * 5000 + '"', "-0.0"):
        header = '{"submission_id": ' + raw_id + ', "submission_key": "k"}'
        envelope_error(lms.post(f"{xqueue.url}/xqueue/put_result/", data={"xqueue_header": header,
                                                                          "xqueue_body": "{}"}, timeout=10))
    header = '{"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": NaN, "queue_name": "' + queue_name + '"}'
    envelope_error(lms.post(f"{xqueue.url}/xqueue/submit/", data={"xqueue_header": header, "xqueue_body": ""},
                            timeout=10))
    for params in ({"wait": "nan"}, {"wait": "-1"}, {"max": "1e999"}, {"max": "nan"}, {"max": "0.5"}):
        reply = lms.get(f"{xqueue.url}/xqueue/get_submission/", params={"queue_name": queue_name, **params},
                        timeout=40)
        envelope_error(reply)


BAD_PATH_NAMES = ["a%00b", "abc%0A", "%ED%A0%80", "%C3%A9t%C3%A9", "x" * 200, "bad%20name!", "..%2F..", "-lead"]


@pytest.mark.parametrize("name", BAD_PATH_NAMES)
def test_admin_routes_check_the_name_in_the_path(xqueue: ServerThread, name: str) -> None:
    api = requests.Session()
    api.auth = (xqueue.admin.username, xqueue.admin.password)
    for method, path in (("PUT", f"/api/v1/queues/{name}"), ("DELETE", f"/api/v1/queues/{name}"),
                         ("GET", f"/api/v1/queues/{name}/length"), ("PUT", f"/api/v1/users/{name}"),
                         ("DELETE", f"/api/v1/users/{name}")):
        response = api.request(method, f"{xqueue.url}{path}", json={"password": "long-enough"}, timeout=10)
        if response.status_code == 404 and "%2F" in name:
            continue  # an encoded slash splits the path: no such route, which is fine
        json_error(response)
    assert name.replace("%0A", "\n") not in [q["name"] for q in api.get(f"{xqueue.url}/api/v1/queues",
                                                                         timeout=10).json()["queues"]]


@pytest.mark.parametrize("token_id", ["%C2%B2", "%D9%A1", "1%00", "-1", "1e3", "9" * 30])
def test_token_ids_in_the_path_are_checked(xqueue: ServerThread, token_id: str) -> None:
    response = requests.delete(f"{xqueue.url}/api/v1/tokens/{token_id}", timeout=10,
                               auth=(xqueue.admin.username, xqueue.admin.password))
    json_error(response)  # "²" passed str.isdigit() and then made int() raise


@pytest.mark.parametrize(("key", "query"), [
    ("a" * 32, "expires=99999999999&signature=%C3%A9"),  # non-ASCII: hmac.compare_digest raised TypeError
    ("a" * 32, "expires=99999999999&signature=" + "\u00e9" * 64),
    ("a" * 32, "expires=%D9%A1%D9%A2%D9%A3&signature=" + "0" * 64),  # Arabic-Indic digits
    ("a" * 32, "expires=" + "9" * 5000 + "&signature=" + "0" * 64),
    ("a" * 32, "expires=1e10&signature=" + "0" * 64),
    ("a" * 32, "expires=%2099999999999&signature=" + "0" * 64),
    ("a" * 32, "expires=&signature="),
    ("a" * 32 + "%0A", "expires=99999999999&signature=" + "0" * 64),
    ("a" * 32, "expires=99999999999&signature=" + "0" * 64 + "%00"),
])
def test_malformed_file_url_signatures_are_refused_without_login(xqueue: ServerThread, key: str, query: str) -> None:
    response = requests.get(f"{xqueue.url}/xqueue/files/{key}?{query}", timeout=10)
    assert response.status_code in (400, 403, 404), (response.status_code, response.text[:200])


def test_duplicate_fields_empty_bodies_and_wrong_content_types(xqueue: ServerThread, queue_name: str) -> None:
    header = json.dumps({"lms_callback_url": "http://127.0.0.1:9/cb", "lms_key": "k", "queue_name": queue_name})
    lms = requests.Session()
    lms.auth = LMS_AUTH
    submit = f"{xqueue.url}/xqueue/submit/"
    twice = lms.post(submit, data=[("xqueue_header", header), ("xqueue_header", header), ("xqueue_body", "")],
                     timeout=10)
    assert "more than once" in envelope_error(twice)
    body, headers = multipart([field("xqueue_header", header.encode()), field("xqueue_header", b"{}"),
                               field("xqueue_body", b"")])
    assert "more than once" in envelope_error(lms.post(submit, data=body, headers=headers, timeout=10))
    for content_type in ("text/plain", "application/json", "application/xml; charset=utf-8"):
        reply = lms.post(submit, data=b"xqueue_header=x", headers={"Content-Type": content_type}, timeout=10)
        assert "Content-Type" in envelope_error(reply)
    envelope_error(lms.post(submit, data=b"", headers={"Content-Type": FORM}, timeout=10))
    envelope_error(lms.post(f"{xqueue.url}/xqueue/put_result/", data=b"", timeout=10))
    envelope_error(requests.post(f"{xqueue.url}/xqueue/login/", json={"username": "lms"}, timeout=10))
    for encoding in ("gzip", "deflate"):
        # A fresh connection each: aiohttp closes one whose body could not be decoded.
        reply = requests.post(submit, data=b"garbage", auth=LMS_AUTH, timeout=10,
                              headers={"Content-Type": FORM, "Content-Encoding": encoding})
        assert "malformed" in envelope_error(reply)
    api = requests.Session()
    api.auth = (xqueue.admin.username, xqueue.admin.password)
    assert "JSON object" in json_error(api.put(f"{xqueue.url}/api/v1/users/empty-user", data=b"", timeout=10))
    assert "JSON object" in json_error(api.post(f"{xqueue.url}/api/v1/tokens", data=b'"lms"', timeout=10))
    assert GraderClient(xqueue).queue_length(queue_name) == {"return_code": 0, "content": 0}
