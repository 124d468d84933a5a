"""Property-based fuzzing of every endpoint: whatever a client sends, the server never answers 5xx, and
nothing it acknowledged is lost.

Covered: the seven classic routes, the admin API (queues, users, tokens), the ops routes (health,
readiness, metrics, signed file URLs) and unknown paths and methods; every field, header and query
parameter the server reads. Text strategies include lone surrogates, NUL, control characters, bidi
and BOM characters, bad percent-encoding, exotic charsets (Python codecs that are not charsets),
deep JSON nesting, NaN, infinities and huge numbers. Requests go out through ``http.client``
byte for byte, so invalid percent escapes and non-UTF-8 header bytes reach the server unchanged.

Runtime is kept for CI (well under a minute): a fixed number of examples per endpoint family,
derandomized (the same examples every run, no example database), no deadline. For a deeper run set
``XQUEUE_FUZZ_SCALE`` (e.g. 10) to multiply the examples.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes, urlsplit

import asyncpg
import pytest
import requests
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.integration.clients import GRADE, GraderClient, LMSClient
from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import FakeLMS, ServerThread, create_database

settings.register_profile(
    "xqueue-fuzz",
    deadline=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
SCALE = max(1, int(os.environ.get("XQUEUE_FUZZ_SCALE", "1")))


def fuzz(examples: int) -> Any:
    return settings(settings.get_profile("xqueue-fuzz"), max_examples=examples * SCALE)


# aiohttp decodes RFC 2231 part names (name*=unicode_escape''...) with the codec the client names before our
# reader refuses that charset; the unicode_escape codec warns about escapes it does not know.
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

QUEUE = "fuzz-q"
PROTECTED_USERS = {"admin", "lms", "grader"}
PROTECTED_QUEUES = {QUEUE, "test-pull"}

# ------------------------------------------------------------------------------------------------ strategies
NASTY = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udcff", "x\udfffy", "\ud83d\ude00", "😀", "é", "\u202e", "\ufeff", "\x1b[2J",
    "\r\n", "\t", "\x7f", "\x85", "\U0010ffff", "%ED%A0%80", "%00", "%zz", "%", "%E9", "\\ud800", "\\u0000",
    "NaN", "Infinity", "-Infinity", "1e999", "-0", "9" * 400, "[" * 300, '{"a":' * 200, "../../etc/passwd",
    "'; DROP TABLE submissions; --", "null", "true", "{}", "[]", QUEUE, "test-pull", "admin", "lms", "a" * 129,
]
text = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(exclude_categories=()), max_size=24),  # every code point, surrogates included
    st.text(st.sampled_from("aZ0_.:@+- %\\\x00\ud800é"), max_size=12),
)
CHARSETS = [None, None, None, "utf-8", "UTF8", "latin-1", "iso-8859-15", "cp1252", "utf-16", "us-ascii",
            "unicode_escape", "raw_unicode_escape", "rot13", "hex", "base64", "idna", "punycode", "utf-7",
            "undefined", "bogus", "", '"utf-8"', "x" * 80, "utf-8\x00", "\udcff"]
charset = st.sampled_from(CHARSETS)
big_numbers = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, 10**30, -(10**30),
                               2**63, 2**63 - 1, -(2**63), 0, -1, 1, 1.5, True, False])
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), big_numbers,
                        st.floats(allow_nan=True, allow_infinity=True), text)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=8)


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True)  # NaN/Infinity tokens; lone surrogates as \\udXXX escapes


deep_json = st.integers(1, 3000).flatmap(lambda n: st.sampled_from(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n,
                                                                     "[" * n]))
json_text = st.one_of(json_value.map(dumps), deep_json, text, st.sampled_from(["1e999", "9" * 5000, "-" + "9" * 400]))


def wire(value: str) -> bytes:
    """Text as bytes on the wire; lone surrogates become the (invalid UTF-8) bytes a broken client sends."""
    return value.encode("utf-8", "surrogatepass")


def pct(value: str | bytes) -> str:
    return quote_from_bytes(value if isinstance(value, bytes) else wire(value), safe="")


raw_pct = st.one_of(text.map(pct), st.sampled_from(["%zz", "%", "%E", "%ED%A0%80", "%C0%80", "%FF", "%00", "+",
                                                    "%2F..%2F", "a%0Ab"]))
plain_file_name = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_. ()é-]{0,30}", fullmatch=True)
header_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").lstrip(b" \t"))


@dataclass
class Target:
    method: str
    path: str  # already percent-encoded, sent as is
    query: str = ""
    body: bytes = b""
    headers: dict[str, str | bytes] = field(default_factory=dict)


@dataclass(repr=False)
class Server:
    thread: ServerThread
    host: str
    port: int
    basic: dict[str, str]  # account -> Authorization header
    sessions: dict[str, str]  # account -> Cookie header
    acknowledged: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:  # keeps hypothesis' failure reports readable
        return f"Server({self.thread.url})"

    def send(self, target: Target) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            url = target.path + (f"?{target.query}" if target.query else "")
            conn.putrequest(target.method, url, skip_accept_encoding=True)
            headers = {"Content-Length": str(len(target.body)), **target.headers}
            for name, value in headers.items():
                conn.putheader(name, wire(value) if isinstance(value, str) else value)
            conn.endheaders(target.body or None)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(postgres: LocalPostgres) -> Iterator[Server]:
    # Short long-polls, so a fuzzed wait= never holds the run; the fuzz queue beside the default one.
    thread = ServerThread.start(create_database(postgres.url), queues=("test-pull", QUEUE),
                                long_poll_max_seconds=0.2, max_file_bytes=20_000, max_request_bytes=400_000)
    host, port = urlsplit(thread.url).hostname or "", urlsplit(thread.url).port or 0
    accounts = {"lms": thread.lms, "grader": thread.grader, "admin": thread.admin}
    basic = {name: "Basic " + base64.b64encode(f"{a.username}:{a.password}".encode()).decode()
             for name, a in accounts.items()}
    sessions = {}
    for name, account in accounts.items():
        session = requests.Session()
        session.post(f"{thread.url}/xqueue/login/", data={"username": account.username, "password": account.password},
                     timeout=10)
        sessions[name] = f"sessionid={session.cookies['sessionid']}"
    yield Server(thread, host, port, basic, sessions)
    thread.stop()


credentials = st.sampled_from(["lms-basic", "lms-session", "grader-session", "admin-basic", "none", "fuzzed"])


@st.composite
def auth_headers(draw: st.DrawFn, server: Server, default: str | None = None,
                 extras: bool = True) -> dict[str, str | bytes]:
    kind = default or draw(credentials)
    headers: dict[str, str | bytes] = {}
    if kind.endswith("-basic"):
        headers["Authorization"] = server.basic[kind.split("-")[0]]
    elif kind.endswith("-session"):
        headers["Cookie"] = server.sessions[kind.split("-")[0]]
    elif kind == "fuzzed":
        name = draw(st.sampled_from(["Authorization", "Cookie"]))
        prefix = draw(st.sampled_from([b"", b"Basic ", b"Bearer ", b"sessionid="]))
        headers[name] = prefix + draw(header_bytes)
    for extra in draw(st.lists(st.sampled_from(["X-Real-IP", "Host", "Content-Encoding", "Transfer-Encoding"]),
                               max_size=2 if extras else 0, unique=True)):
        value = draw(header_bytes)
        if extra == "Host":
            value = draw(st.sampled_from([value, b"127.0.0.1", b"\xff\xfe.example"]))
        if extra in ("Content-Encoding", "Transfer-Encoding"):
            value = draw(st.sampled_from([b"gzip", b"deflate", b"br", b"identity", b"chunked", value]))
        headers[extra] = value
    return headers


def content_type(kind: str, declared: str | None, boundary: str = "XQFUZZ") -> str:
    base = {"form": "application/x-www-form-urlencoded", "multipart": f"multipart/form-data; boundary={boundary}"}.get(
        kind, kind)
    return base if declared is None else f"{base}; charset={declared}"


def encode_with(value: str, declared: str | None) -> bytes:
    """Bytes in the declared charset when Python can produce them, else UTF-8 (a mismatch the server must catch)."""
    try:
        return value.encode(declared) if declared and declared in ("latin-1", "cp1252", "utf-16", "iso-8859-15",
                                                                    "us-ascii") else wire(value)
    except (UnicodeEncodeError, LookupError):
        return wire(value)


def urlencoded(pairs: list[tuple[str, str]], declared: str | None) -> bytes:
    return "&".join(f"{pct(encode_with(k, declared))}={pct(encode_with(v, declared))}" for k, v in pairs).encode()


@st.composite
def multipart_body(draw: st.DrawFn, fields: list[tuple[str, str]], files: list[tuple[str, bytes]]) -> bytes:
    return draw(multipart_and_charsets(fields, files))[0]


@st.composite
def multipart_and_charsets(draw: st.DrawFn, fields: list[tuple[str, str]], files: list[tuple[str, bytes]],
                           sane: bool = False) -> tuple[bytes, set[str | None]]:
    """A multipart body, and the charsets its text parts declare (``sane``: a well-formed frame)."""
    parts = []
    declared: set[str | None] = set()
    for name, value in fields:
        part_charset = draw(st.sampled_from([None, None, "utf-8"] + ([] if sane else
                                                                     ["latin-1", "unicode_escape", "bogus", "rot13"])))
        declared.add(part_charset)
        ct = b"" if part_charset is None else b"\r\nContent-Type: text/plain; charset=" + wire(part_charset)
        parts.append(b'Content-Disposition: form-data; name="' + wire(name) + b'"' + ct + b"\r\n\r\n"
                     + encode_with(value, part_charset))
    for name, data in files:
        style = draw(st.sampled_from(["quoted", "rfc2231"] + ([] if sane else ["rfc2231-codec", "raw-latin1"])))
        if style == "quoted":
            disposition = b'name="' + wire(name).replace(b'"', b"") + b'"'
        elif style == "rfc2231":
            disposition = b"name*=utf-8''" + pct(name).encode()
        elif style == "rfc2231-codec":
            disposition = b"name*=" + draw(st.sampled_from([b"unicode_escape", b"bogus", b"latin-1"])) + b"''" + pct(
                name).encode()
        else:
            disposition = b'name="' + name.encode("latin-1", "replace").replace(b'"', b"") + b'"'
        parts.append(b"Content-Disposition: form-data; " + disposition + b'; filename="f"\r\n'
                     b"Content-Type: application/octet-stream\r\n\r\n" + data)
    body = b"".join(b"--XQFUZZ\r\n" + part + b"\r\n" for part in parts) + b"--XQFUZZ--\r\n"
    if not sane and draw(st.integers(0, 9)) == 0:  # now and then a truncated body
        body = body[: draw(st.integers(0, len(body)))]
    return body, declared


def check(status: int, headers: dict[str, str], body: bytes, target: Target) -> dict[str, Any] | None:
    """The invariant for every request: no 5xx; classic routes answer 200 with a well-formed envelope."""
    assert status < 500, (target.method, target.path, target.query[:200], status, body[:300])
    classic = target.path.startswith("/xqueue/") and not target.path.startswith("/xqueue/files/")
    if classic and status == 200 and target.method != "HEAD":
        assert headers.get("content-type", "").startswith("application/json"), (target.path, headers, body[:200])
        reply = json.loads(body)
        assert reply["return_code"] in (0, 1), reply
        return reply
    if classic and status == 302:
        assert headers["location"].startswith("/xqueue/login/?next="), headers
    return None


# ------------------------------------------------------------------------------------------------ the properties
@st.composite
def submits(draw: st.DrawFn, server: Server) -> tuple[Target, dict[str, Any]]:
    # Half the examples are well-formed requests carrying nasty data (body, key, file names and contents),
    # so many are accepted and "nothing lost" has something to check; the other half fuzz the frame too.
    sane = draw(st.booleans())
    marker = f"fz-{uuid.uuid4().hex}"  # a label only (not part of the example), unique per request
    callback = draw(st.sampled_from([f"http://127.0.0.1:9/cb/{marker}", f"https://lms.example/cb/{marker}?x=1"]))
    header_value: Any = {
        "lms_callback_url": callback if sane else draw(st.one_of(st.just(callback), text.map(lambda t: callback + t),
                                                                 json_value)),
        "lms_key": draw(json_value),
        # hypothesis favours the first choice and the low end of ranges: the usual case goes first
        "queue_name": (QUEUE if draw(st.integers(0, 4)) < 4 else draw(text)) if sane
        else draw(st.one_of(st.just(QUEUE), json_value)),
    }
    if not sane:
        for key in draw(st.lists(st.sampled_from(list(header_value)), max_size=1)):
            del header_value[key]  # sometimes a required key is missing
    header = dumps(header_value) if sane else draw(st.one_of(st.just(dumps(header_value)), json_text))
    body = draw(st.one_of(st.just("def f():\n    return 42\n"), text, json_text))
    # Mostly names a client could send (a fuzzed name refuses the whole submission), some nasty ones.
    file_name = st.integers(0, 5).flatmap(lambda n: plain_file_name if sane and n < 5 else text)
    files = draw(st.lists(st.tuples(file_name, st.binary(max_size=64)), max_size=3))
    files = [(name, data + marker.encode()) for name, data in files]  # contents unique to this example
    declared = draw(st.sampled_from([None, "utf-8"])) if sane else draw(charset)
    fields = [("xqueue_header", header), ("xqueue_body", body)]
    if not sane:
        fields += draw(st.lists(st.tuples(st.sampled_from(["xqueue_header", "xqueue_body", "other"]), text),
                                max_size=1))
    kind = "multipart" if bool(files) or draw(st.booleans()) else "form"
    if not sane:
        kind = draw(st.sampled_from([kind, kind, "application/json", "text/plain", ""]))
    part_charsets: set[str | None] = {declared}
    if kind == "multipart":
        payload, part_charsets = draw(multipart_and_charsets(fields, files, sane))
    else:
        payload = urlencoded(fields, declared) if sane or draw(st.integers(0, 5)) else draw(st.binary(max_size=200))
    headers = {**draw(auth_headers(server, "lms-basic" if sane else None, extras=not sane)),
               "Content-Type": content_type(kind, declared)}
    method = "POST" if sane else draw(st.sampled_from(["POST", "POST", "PUT", "GET"]))
    target = Target(method, "/xqueue/submit/", body=payload, headers=headers)
    sent = {"marker": marker, "sane": sane, "body": body, "files": sorted(data for _, data in files),
            # the server must then store exactly the text we sent
            "plain_text": part_charsets <= {None, "utf-8", "UTF8", '"utf-8"'} and kind in ("form", "multipart")}
    return target, sent


@fuzz(200)
@given(data=st.data())
def test_fuzz_submit(server: Server, data: st.DataObject) -> None:
    target, sent = data.draw(submits(server))
    status, headers, body = server.send(target)
    reply = check(status, headers, body, target)
    if reply is not None and reply["return_code"] == 0:
        server.acknowledged.append(sent)


@fuzz(120)
@given(data=st.data())
def test_fuzz_put_result(server: Server, data: st.DataObject) -> None:
    draw = data.draw
    header_value = {"submission_id": draw(st.one_of(json_value, st.integers(-(2**70), 2**70))),
                    "submission_key": draw(st.one_of(text, json_value))}
    header = draw(st.one_of(st.just(dumps(header_value)), json_text))
    results = dumps(draw(st.lists(st.one_of(st.fixed_dictionaries({"xqueue_header": st.just(header),
                                                                    "xqueue_body": text}), json_value), max_size=4)))
    fields = draw(st.sampled_from([[("xqueue_header", header), ("xqueue_body", draw(text))],
                                   [("results", draw(st.one_of(st.just(results), json_text)))],
                                   [("xqueue_header", header)], []]))
    sane = draw(st.booleans())
    declared = draw(charset)
    kind = draw(st.sampled_from(["form", "multipart"] if sane else ["form", "multipart", "application/json", ""]))
    payload = draw(multipart_body(fields, [])) if kind == "multipart" else urlencoded(fields, declared)
    headers = {**draw(auth_headers(server, "grader-session" if sane else None, extras=not sane)),
               "Content-Type": content_type(kind, declared)}
    target = Target("POST" if sane else draw(st.sampled_from(["POST", "GET"])), "/xqueue/put_result/", body=payload,
                    headers=headers)
    check(*server.send(target), target)


@fuzz(120)
@given(data=st.data())
def test_fuzz_pull_endpoints(server: Server, data: st.DataObject) -> None:
    draw = data.draw
    params = []
    for name in ("queue_name", "wait", "max"):
        choice = draw(st.sampled_from(["absent", "fuzz", "plain"]))
        plain = {"queue_name": draw(st.sampled_from([QUEUE, "test-pull", "no-such"])), "wait": "0.1", "max": "2"}[name]
        if choice == "plain":
            params.append(f"{name}={plain}")
        elif choice == "fuzz":
            params.append(f"{name}={draw(st.one_of(raw_pct, st.sampled_from(['nan', 'inf', '-1', '1e999', '0'])))}")
    params += draw(st.lists(raw_pct.map(lambda v: f"{v}={v}"), max_size=1))
    path = draw(st.sampled_from(["/xqueue/get_submission/", "/xqueue/get_queuelen/", "/xqueue/get_submission"]))
    target = Target(draw(st.sampled_from(["GET", "GET", "POST", "HEAD"])), path, "&".join(params),
                    headers=draw(auth_headers(server, draw(st.sampled_from(["grader-session", None])))))
    check(*server.send(target), target)


@fuzz(60)
@given(data=st.data())
def test_fuzz_login_logout_status(server: Server, data: st.DataObject) -> None:
    draw = data.draw
    path = draw(st.sampled_from(["/xqueue/login/", "/xqueue/login/", "/xqueue/logout/", "/xqueue/status/"]))
    fields = [("username", draw(st.one_of(st.sampled_from(["lms", "grader"]), text))),
              ("password", draw(st.one_of(st.just("lms-password"), text)))]
    fields = draw(st.sampled_from([fields, fields[:1], fields + fields[:1], []]))
    declared = draw(charset)
    kind = draw(st.sampled_from(["form", "form", "multipart", "application/json"]))
    payload = draw(multipart_body(fields, [])) if kind == "multipart" else urlencoded(fields, declared)
    headers = {**draw(auth_headers(server)), "Content-Type": content_type(kind, declared)}
    target = Target(draw(st.sampled_from(["POST", "POST", "GET", "DELETE"])), path, body=payload, headers=headers)
    check(*server.send(target), target)


@fuzz(160)
@given(data=st.data())
def test_fuzz_admin_api(server: Server, data: st.DataObject) -> None:
    draw = data.draw
    name = draw(st.one_of(text, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,20}", fullmatch=True)))
    assume(name not in PROTECTED_USERS | PROTECTED_QUEUES and name.lower() not in PROTECTED_USERS)
    token_id = draw(st.one_of(raw_pct, st.integers(-5, 2**70).map(str), st.sampled_from(["%C2%B2", "%D9%A1"])))
    method, path = draw(st.sampled_from([
        ("GET", "/api/v1/queues"), ("PUT", f"/api/v1/queues/{pct(name)}"), ("DELETE", f"/api/v1/queues/{pct(name)}"),
        ("GET", f"/api/v1/queues/{pct(name)}/length"), ("PUT", f"/api/v1/users/{pct(name)}"),
        ("DELETE", f"/api/v1/users/{pct(name)}"), ("POST", "/api/v1/tokens"), ("GET", "/api/v1/tokens"),
        ("DELETE", f"/api/v1/tokens/{token_id}"), ("PATCH", "/api/v1/queues"),
    ]))
    body_value = draw(st.one_of(
        st.fixed_dictionaries({"password": st.one_of(st.just("long-enough-password"), text)},
                              optional={"is_admin": json_value, "pull_queues": json_value,
                                        "submit_queues": json_value}),
        st.fixed_dictionaries({"username": st.one_of(st.sampled_from(["lms", "grader"]), text)},
                              optional={"ttl_seconds": st.one_of(big_numbers, json_value),
                                        "pull_queues": st.lists(text, max_size=3), "submit_queues": json_value}),
        json_value,
    ))
    if isinstance(body_value, dict) and body_value.get("is_admin") is True:
        body_value["is_admin"] = False  # a fuzzed admin account would only widen what later examples can do
    sane = draw(st.booleans())  # an admin's well-formed request carrying nasty values, or anything at all
    body_text = dumps(body_value) if sane else draw(st.one_of(st.just(dumps(body_value)), json_text))
    declared = None if sane else draw(st.sampled_from([None, "utf-8", "utf-16", "latin-1", "unicode_escape", "bogus"]))
    body = encode_with(body_text, declared)
    query = draw(st.sampled_from(["", "", f"username={pct(name)}", draw(raw_pct)]))
    headers = {**draw(auth_headers(server, "admin-basic" if sane else None, extras=not sane)),
               "Content-Type": content_type(draw(st.sampled_from(["application/json", "text/plain", ""])), declared)}
    target = Target(method, path, query, body, headers)
    check(*server.send(target), target)


@fuzz(120)
@given(data=st.data())
def test_fuzz_ops_routes_and_file_urls(server: Server, data: st.DataObject) -> None:
    draw = data.draw
    key = draw(st.one_of(st.sampled_from(["a" * 32, "0" * 32, "A" * 32, "a" * 31, "a" * 32 + "%0A", "..%2Fx"]),
                         raw_pct))
    query = "&".join([f"expires={draw(st.one_of(raw_pct, st.integers(-(10**20), 10**20).map(str)))}",
                      f"signature={draw(st.one_of(raw_pct, st.sampled_from(['0' * 64, 'g' * 64, '%C3%A9' * 32])))}"])
    method, path = draw(st.sampled_from([("GET", f"/xqueue/files/{key}")] * 4 + [("HEAD", f"/xqueue/files/{key}"),
                                         ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                                         ("POST", "/metrics"), ("GET", "/xqueue/status/")]))
    target = Target(method, path, draw(st.sampled_from([query, query, ""])), headers=draw(auth_headers(server, "none")))
    check(*server.send(target), target)


@fuzz(80)
@given(data=st.data())
def test_fuzz_unknown_paths_and_methods(server: Server, data: st.DataObject) -> None:
    draw = data.draw
    segments = draw(st.lists(st.one_of(raw_pct, st.sampled_from(["xqueue", "api", "v1", "files", "..", "submit"])),
                             min_size=1, max_size=4))
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "X-Y"]))
    target = Target(method, "/" + "/".join(segments), draw(st.sampled_from(["", "a=1", "%zz"])),
                    body=draw(st.binary(max_size=64)), headers=draw(auth_headers(server)))
    check(*server.send(target), target)


# ------------------------------------------------------------------------------------------------ nothing lost
def stored_rows(server: Server) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(server.thread.settings.database_url)
        try:
            rows = await conn.fetch("SELECT lms_callback_url, xqueue_body, files::text AS files FROM submissions")
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def test_fuzz_nothing_acknowledged_is_lost_and_a_clean_cycle_works(server: Server, fake_lms: FakeLMS) -> None:
    """Runs after the fuzzing above (file order): every submission answered with return_code 0 is stored,
    body and files, and no row exists that was not acknowledged; then a well-formed cycle still works."""
    storage = server.thread.settings.resolved_storage_dir
    rows = stored_rows(server)
    by_marker: dict[str, dict[str, Any]] = {}
    for row in rows:
        found = re.search(r"fz-[0-9a-f]{32}", row["lms_callback_url"])
        assert found is not None, "a row that no fuzzed submission made"
        marker = found.group(0)
        assert marker not in by_marker, "one row per acknowledged submission"
        by_marker[marker] = row
    assert {s["marker"] for s in server.acknowledged} == set(by_marker), "rows and acknowledgements differ"
    for sent in server.acknowledged:
        row = by_marker[sent["marker"]]
        if sent["plain_text"]:
            assert row["xqueue_body"] == sent["body"]
        keys = json.loads(row["files"]).values()
        contents = sorted((storage / key[:2] / key).read_bytes() for key in keys)
        assert contents == sent["files"]
    stored = {p.name for p in storage.rglob("*") if p.is_file()}
    expected = {key for row in rows for key in json.loads(row["files"]).values()}
    assert stored == expected, "a stored file that no row names (or a named file that is missing)"

    lms, grader = LMSClient(server.thread), GraderClient(server.thread)
    while grader.pull(QUEUE, max=50) is not None:  # take the fuzz backlog out of the way
        pass
    key, (code, _) = lms.submit(QUEUE, fake_lms.callback_url("clean"), "clean", files={"a.py": b"print(1)"})
    assert code == 0
    item = grader.pull(QUEUE)
    assert item is not None and item["xqueue_body"] == "clean"
    assert requests.get(json.loads(item["xqueue_files"])["a.py"], timeout=10).content == b"print(1)"
    assert grader.put_result(item["xqueue_header"], GRADE) == {"return_code": 0, "content": ""}
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs))
    # The fuzzing did reach the interesting paths: some submissions were accepted, with files.
    assert len(server.acknowledged) >= 20 and sum(bool(s["files"]) for s in server.acknowledged) >= 5
