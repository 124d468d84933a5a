"""Failed-login throttling (ratelimit.py) and trusted-proxy client addresses (client_address.py),
against real servers: guessers are slowed down, the LMS's own address keeps working, replicas share
the counters, and forwarded addresses only count from configured proxies."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import requests

from tests.integration.clients import GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server.db import Database
from xqueue_server.testing import FakeLMS, ServerThread

LIMITS = {"login_max_failures_per_account_address": 3, "login_max_failures_per_address": 6,
          "login_max_failures_per_account": 10}
THROTTLED = re.compile(r"^Too many failed login attempts; try again in \d+ seconds$")


def login(server: ServerThread, username: str, password: str, ip: str | None = None) -> requests.Response:
    headers = {"X-Real-IP": ip} if ip else {}
    response = requests.post(f"{server.url}/xqueue/login/", data={"username": username, "password": password},
                             headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def basic(server: ServerThread, path: str, username: str, password: str, ip: str | None = None,
          **params: Any) -> requests.Response:
    headers = {"X-Real-IP": ip} if ip else {}
    return requests.get(f"{server.url}{path}", params=params, auth=(username, password), headers=headers,
                        allow_redirects=False, timeout=30)


def assert_throttled(response: requests.Response) -> None:
    reply = response.json()
    assert reply["return_code"] == 1 and THROTTLED.match(reply["content"]), reply
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def metric(server: ServerThread, method: str, reason: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf'^xqueue_login_failures_total\{{method="{method}",reason="{reason}"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_guessers_are_throttled_but_the_lms_keeps_working_from_its_own_address(
        xqueue_factory: Callable[..., ServerThread]) -> None:
    server = xqueue_factory(trusted_proxies=("127.0.0.1/32",), **LIMITS)
    lms, right = server.lms.username, server.lms.password
    lms_ip, attacker = "10.0.0.1", "10.6.6.6"
    assert login(server, lms, right, lms_ip).json()["content"] == "Logged in"  # its usual address

    # One attacker address: three guesses, then even the right password is refused unchecked
    # (a block that let the right password through would tell the guesser when it is right).
    for _ in range(3):
        assert login(server, lms, "guess", attacker).json()["content"] == "Incorrect login credentials"
    assert_throttled(login(server, lms, right, attacker))
    # HTTP Basic is the same password check: 429 with Retry-After, in the route's own format.
    classic = basic(server, "/xqueue/get_queuelen/", lms, right, attacker, queue_name="test-pull")
    assert classic.status_code == 429
    assert_throttled(classic)
    admin_api = basic(server, "/api/v1/queues", server.admin.username, server.admin.password, attacker)
    assert admin_api.status_code == 200  # another account from that address: under the address limit
    for _ in range(3):
        basic(server, "/api/v1/queues", server.admin.username, "guess", attacker)
    refused = basic(server, "/api/v1/queues", server.admin.username, server.admin.password, attacker)
    assert refused.status_code == 429 and THROTTLED.match(refused.json()["error"])
    assert refused.headers["Retry-After"]

    # Many addresses against one account (3 + 7 = 10 failures): a new address is refused too...
    for i in range(7):
        assert login(server, lms, "guess", f"10.7.0.{i}").json()["content"] == "Incorrect login credentials"
    assert_throttled(login(server, lms, right, "10.8.0.1"))
    # ...but the LMS's own address is not: the attack cannot lock the real LMS out.
    assert login(server, lms, right, lms_ip).json() == {"return_code": 0, "content": "Logged in"}
    ok = basic(server, "/xqueue/get_queuelen/", lms, right, lms_ip, queue_name="test-pull")
    assert ok.status_code == 200 and ok.json()["return_code"] == 0

    # One address spraying many accounts: the address as a whole is throttled (6 failures).
    for i in range(6):
        login(server, f"nobody-{i}", "guess", "10.5.5.5")
    assert_throttled(login(server, server.grader.username, server.grader.password, "10.5.5.5"))
    assert login(server, server.grader.username, server.grader.password, "10.5.5.6").json()["return_code"] == 0

    assert metric(server, "login", "bad_credentials") == 3 + 7 + 6
    assert metric(server, "login", "throttled") == 3
    assert metric(server, "basic", "bad_credentials") == 3
    assert metric(server, "basic", "throttled") == 2


def test_forwarded_addresses_count_only_from_trusted_proxies(xqueue_factory: Callable[..., ServerThread],
                                                             fake_lms: FakeLMS) -> None:
    """Without XQUEUE_TRUSTED_PROXIES a client cannot pick a fresh address per guess with X-Real-IP or
    X-Forwarded-For, nor pose as another grader pod in the operator's in-flight figures."""
    server = xqueue_factory(**LIMITS)
    for i in range(3):
        headers = {"X-Real-IP": f"10.0.0.{i}", "X-Forwarded-For": f"10.1.0.{i}"}
        requests.post(f"{server.url}/xqueue/login/", data={"username": "grader", "password": "guess"},
                      headers=headers, timeout=30)
    assert_throttled(login(server, "grader", server.grader.password, "10.0.0.99"))

    LMSClient(server).submit("test-pull", fake_lms.callback_url("spoof"))
    grader = requests.Session()
    grader.auth = (server.lms.username, server.lms.password)
    pulled = grader.get(f"{server.url}/xqueue/get_submission/", params={"queue_name": "test-pull"},
                        headers={"X-Real-IP": "10.9.9.9", "X-Forwarded-For": "10.9.9.8"}, timeout=30).json()
    assert pulled["return_code"] == 0
    length = requests.get(f"{server.url}/api/v1/queues/test-pull/length", timeout=10,
                          auth=(server.admin.username, server.admin.password)).json()
    assert length["in_flight_by_grader"] == {"127.0.0.1": 1}


def test_a_trusted_proxy_names_the_grader_address(xqueue_factory: Callable[..., ServerThread],
                                                  fake_lms: FakeLMS) -> None:
    server = xqueue_factory(trusted_proxies=("127.0.0.0/8",))
    LMSClient(server).submit("test-pull", fake_lms.callback_url("proxied"))
    grader = GraderClient(server)
    grader.session.headers["X-Forwarded-For"] = "198.51.100.1, 10.2.3.4"
    assert grader.pull("test-pull") is not None
    length = requests.get(f"{server.url}/api/v1/queues/test-pull/length", timeout=10,
                          auth=(server.admin.username, server.admin.password)).json()
    assert length["in_flight_by_grader"] == {"10.2.3.4": 1}


def test_replicas_share_the_counters_and_blocks_end_with_their_window(
        xqueue_factory: Callable[..., ServerThread]) -> None:
    first = xqueue_factory(login_failure_window_seconds=3, **LIMITS)
    second = xqueue_factory(database_url=first.settings.database_url, login_failure_window_seconds=3, **LIMITS)
    for server in (first, second, first):
        assert login(server, "grader", "guess").json()["content"] == "Incorrect login credentials"
    started = time.monotonic()
    throttled = login(second, "grader", second.grader.password)
    assert_throttled(throttled)
    assert int(throttled.headers["Retry-After"]) <= 3

    def let_in() -> dict[str, Any] | None:
        reply = login(second, "grader", second.grader.password).json()
        if reply["return_code"] == 0:
            return reply
        assert THROTTLED.match(reply["content"]), reply
        return None

    reply = wait_until_blocking(let_in, 10, "the login let in once the window ended", interval=0.5)
    assert json.dumps(reply) == json.dumps({"return_code": 0, "content": "Logged in"})
    assert time.monotonic() - started < 5


def test_housekeeping_forgets_stale_throttle_state(xqueue_factory: Callable[..., ServerThread]) -> None:
    server = xqueue_factory(**LIMITS)
    login(server, "grader", "guess")
    login(server, "grader", server.grader.password)

    async def age_and_sweep() -> tuple[int, int]:
        db = await Database.connect(server.settings.database_url or "", 1, 1)
        try:
            await db.delete_expired_sessions()  # fresh state stays
            assert await db.pool.fetchval("SELECT count(*) FROM login_failures") == 2  # address, account
            assert await db.pool.fetchval("SELECT count(*) FROM login_known_addresses") == 1
            await db.pool.execute("UPDATE login_failures SET window_start = now() - interval '2 days'")
            await db.pool.execute("UPDATE login_known_addresses SET last_success_at = now() - interval '31 days'")
            await db.delete_expired_sessions()
            return (await db.pool.fetchval("SELECT count(*) FROM login_failures"),
                    await db.pool.fetchval("SELECT count(*) FROM login_known_addresses"))
        finally:
            await db.close()

    assert server.run(age_and_sweep()) == (0, 0)
