"""The XQueue client against a real HTTP server emulating classic XQueue (and its newer variants)."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import pytest

from xqueue_grader.client import XQueueClient
from xqueue_grader.protocol import parse_submission

from .fake_xqueue import FakeXQueue


def client_for(fake: FakeXQueue, **kwargs: Any) -> XQueueClient:
    options: dict[str, Any] = {"username": fake.username, "password": fake.password, "timeout": 5}
    options.update(kwargs)
    return XQueueClient(fake.url, fake.queue, **options)


async def test_login_once_then_pull_and_put(fake: FakeXQueue) -> None:
    fake.submit({"grader_payload": "{}", "student_response": "x"})
    async with client_for(fake) as client:
        assert await client.login()
        empty_or_item = await client.get_submission()
        assert empty_or_item.ok
        submission = parse_submission(empty_or_item.content)
        again = await client.get_submission()
        assert (again.ok, again.kind, again.content) == (False, "rejected", "Queue 'test-queue' is empty")
        put = await client.put_result({"xqueue_header": submission.header, "xqueue_body": json.dumps({"score": 1})})
        assert put.ok
    assert fake.logins == 1
    assert fake.results == [(submission.header, {"score": 1})]
    # The password never travels anywhere but the login form.
    assert all(r.form.get("password") is None for r in fake.requests)


async def test_redirect_to_login_triggers_one_relogin_and_a_retry(fake: FakeXQueue) -> None:
    async with client_for(fake) as client:
        assert await client.login()
        fake.expire_sessions()
        outcome = await client.get_submission()
        assert outcome.kind == "rejected"  # empty queue, after logging in again
    assert fake.logins == 2
    assert fake.count("/xqueue/get_submission/") == 2


@pytest.mark.parametrize("status", [401, 403])
async def test_newer_servers_answering_401_or_403_also_trigger_relogin(fake: FakeXQueue, status: int) -> None:
    fake.unauth_status = status
    async with client_for(fake) as client:
        outcome = await client.get_submission()  # no session yet
        assert outcome.kind == "rejected"
    assert fake.logins == 1


async def test_bad_credentials_give_up_after_one_attempt_per_request(fake: FakeXQueue) -> None:
    async with client_for(fake, password="wrong") as client:
        assert not await client.login()
        outcome = await client.get_submission()
        assert (outcome.ok, outcome.kind, outcome.content) == (False, "login", "Could not log in")
    # one explicit login, then exactly one re-login for the one request: no loop
    assert fake.logins == 2
    assert fake.count("/xqueue/get_submission/") == 1


async def test_without_username_login_is_skipped(fake: FakeXQueue) -> None:
    async with XQueueClient(fake.url, fake.queue, timeout=5) as client:
        assert await client.login()
        outcome = await client.get_submission()
        assert (outcome.kind, outcome.content) == ("http", f"Received unexpected response status code, 302, "
                                                           f"calling {fake.url}/xqueue/get_submission/.")
    assert fake.logins == 0


async def test_legacy_success_envelope(fake: FakeXQueue) -> None:
    fake.legacy_envelope = True
    fake.submit({"grader_payload": "{}", "student_response": "x"})
    async with client_for(fake) as client:
        outcome = await client.get_submission()
        assert outcome.ok
        submission = parse_submission(outcome.content)
        assert json.loads(submission.header)["submission_id"] == 1
        empty = await client.get_submission()
        assert not empty.ok


async def test_csrf_cookie_is_sent_back_as_header_with_referer(fake: FakeXQueue) -> None:
    fake.csrf = True
    async with client_for(fake) as client:
        assert await client.login()
        await client.get_submission()
    login_post = next(r for r in fake.requests if r.path == "/xqueue/login/" and r.method == "POST")
    assert login_post.headers["X-CSRFToken"] == "csrf-token-123"
    assert login_post.headers["Referer"] == f"{fake.url}/xqueue/login/"
    pull = next(r for r in fake.requests if r.path == "/xqueue/get_submission/")
    assert pull.headers["X-CSRFToken"] == "csrf-token-123" and pull.headers["Referer"] == f"{fake.url}/"


async def test_basic_auth_goes_with_every_request(fake: FakeXQueue) -> None:
    async with client_for(fake, basic_auth=("edx", "edx")) as client:
        await client.get_submission()
    expected = "Basic " + base64.b64encode(b"edx:edx").decode()
    assert fake.requests and all(r.headers.get("Authorization") == expected for r in fake.requests)


async def test_http_errors_and_garbage_are_values_not_exceptions(fake: FakeXQueue) -> None:
    fake.put_failures = 1
    async with client_for(fake) as client:
        failed = await client.put_result({"xqueue_header": "{}", "xqueue_body": "{}"})
        assert failed.kind == "http" and "status code, 500" in failed.content
        bad = await client.put_result({"xqueue_header": "not json", "xqueue_body": "{}"})
        assert (bad.kind, bad.content) == ("rejected", "Incorrect reply format")


async def test_unreachable_server_is_a_connection_outcome() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with XQueueClient(f"http://127.0.0.1:{port}", "q", "u", "p", timeout=2) as client:
        assert not await client.login()
        outcome = await client.get_submission()
        assert outcome.kind in ("login", "connection")


async def test_long_poll_parameter_is_sent(fake: FakeXQueue) -> None:
    fake.supports_wait = True
    async with client_for(fake) as client:
        outcome = await client.get_submission(wait=1)
        assert outcome.kind == "rejected" and outcome.elapsed >= 0.9
    assert [r.query.get("wait") for r in fake.requests if r.path == "/xqueue/get_submission/"][-1] == "1"
