"""A server with a known state for the status page tests, built through the real APIs.

Queue ``course-main`` (account ``staff`` may pull and submit) ends up with:
  2 waiting, 1 in flight (grader 127.0.0.1), 1 graded correct, 1 graded with an error reply,
  1 retired as poison (the sweeper, after its lease ran out), 1 dead-lettered grade (its LMS answers
  500 until the callback horizon passes) - so 3 results and 2 failures in the newest chart slice.
Queue ``course-other`` (3 waiting) is not the staff account's; a queue with a hostile name is, empty.
Clock shortcuts are SQL updates of timestamps only (a lease "ran out"), never of outcomes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import requests

from tests.integration.clients import GraderClient, LMSClient
from xqueue_server.testing import FakeLMS, ServerThread

MAIN = "course-main"
OTHER = "course-other"
HOSTILE = "<b id=\"pwned\">x</b>&amp;'\"<script>document.title='pwned'</script>"
STAFF = ("staff", "staff-password-1")
NOBODY = ("nobody", "nobody-password-1")  # may neither pull nor submit anywhere
SERVER_SETTINGS: dict[str, Any] = {
    "max_pulls": 1,  # one pull without a result is poison once its lease runs out
    "lease_seconds": 900.0,  # the in-flight submission stays in flight for the whole module
    "callback_horizon_seconds": 2.0,  # a failing LMS dead-letters the grade within seconds
    "callback_backoff_base_seconds": 0.2,
    "callback_backoff_max_seconds": 0.5,
    "sweep_interval_seconds": 0.2,
}
ERROR_REPLY = {"correct": False, "score": 0,
               "msg": '<div class="result-errors"><p>Your code raised ZeroDivisionError</p></div>'}


@dataclass
class Scenario:
    server: ServerThread
    in_flight_id: int = 0
    submissions: dict[str, int] = field(default_factory=dict)


def sql(server: ServerThread, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(server.settings.database_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return server.run(run())


def wait_until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def admin(server: ServerThread) -> requests.Session:
    session = requests.Session()
    session.auth = (server.admin.username, server.admin.password)
    return session


def build(server: ServerThread, good_lms: FakeLMS, bad_lms: FakeLMS) -> Scenario:
    api = admin(server)
    for name in (MAIN, OTHER):
        assert api.put(f"{server.url}/api/v1/queues/{name}", timeout=10).status_code == 201
    # The admin API refuses such a name; a queue from the configuration or the database is not checked
    # there, and the page must still escape it.
    sql(server, "INSERT INTO queues (name) VALUES ($1)", HOSTILE)
    for (username, password), pull_queues, submit_queues in ((STAFF, [MAIN, HOSTILE], [MAIN]), (NOBODY, [], [])):
        created = api.put(f"{server.url}/api/v1/users/{username}", json={
            "password": password, "pull_queues": pull_queues, "submit_queues": submit_queues}, timeout=10)
        assert created.status_code == 201, created.text
    lms = LMSClient(server)
    grader = GraderClient(server)
    scenario = Scenario(server)

    def submit(queue: str, name: str, lms_server: FakeLMS = good_lms) -> None:
        _key, (code, _content) = lms.submit(queue, lms_server.callback_url(name), body={"n": name})
        assert code == 0

    def pull(queue: str) -> dict[str, Any]:
        item = grader.pull(queue)
        assert item is not None
        return item

    # FIFO: each step pulls the oldest waiting submission.
    for name in ("correct", "error", "poison", "dead", "in-flight", "wait-1", "wait-2"):
        submit(MAIN, name, bad_lms if name == "dead" else good_lms)
    for name in ("o1", "o2", "o3"):
        submit(OTHER, name)
    correct, error, poison, dead, in_flight = (pull(MAIN) for _ in range(5))
    assert grader.put_result(correct["xqueue_header"], {"correct": True, "score": 1, "msg": "<p>ok</p>"})[
        "return_code"] == 0
    assert grader.put_result(error["xqueue_header"], ERROR_REPLY)["return_code"] == 0
    assert grader.put_result(dead["xqueue_header"], {"correct": True, "score": 1, "msg": "ok"})["return_code"] == 0
    scenario.in_flight_id = json.loads(in_flight["xqueue_header"])["submission_id"]
    # The poison submission's grader never answers: let its lease run out now instead of in 60 s.
    poison_id = json.loads(poison["xqueue_header"])["submission_id"]
    sql(server, "UPDATE submissions SET lease_expires_at = now() WHERE id = $1", poison_id)
    wait_until(lambda: sql(server, "SELECT retired_reason FROM submissions WHERE id = $1", poison_id)[0][0]
               == "poison", "the sweeper to retire the poison submission")
    wait_until(lambda: sql(server, "SELECT count(*) FROM callbacks WHERE state = 'dead'")[0][0] == 1,
               "the failing LMS's grade to be dead-lettered")
    # Results and the poison notice reach the good LMS.
    good_lms.wait_for(lambda calls: len(calls) >= 3, timeout=20)
    return scenario
