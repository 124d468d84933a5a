"""The status page over HTTP against a real server and PostgreSQL: login, scope, numbers, escaping."""

from __future__ import annotations

import html
import json
import re
import threading
from typing import Any

import asyncpg
import requests

from tests.integration.clients import GraderClient, LMSClient
from tests.status.scenario import HOSTILE, MAIN, NOBODY, OTHER, STAFF, Scenario, admin, sql, wait_until
from xqueue_server.status_api import QUERIES

FIELDS = ("waiting", "oldest", "in-flight", "graded", "failed", "dead")


def queues_on(page: str) -> dict[str, dict[str, str]]:
    """{queue name: {field: shown value}} of a rendered status page."""
    found = {}
    for index, name in re.findall(r'<section class="queue" id="queue-(\d+)" data-queue="([^"]*)">', page):
        values = {}
        for name_of_field in FIELDS:
            match = re.search(rf'<dd id="q{index}-{name_of_field}"[^>]*>([^<]*)</dd>', page)
            assert match, (name, name_of_field)
            values[name_of_field] = html.unescape(match.group(1))
        found[html.unescape(name)] = values
    return found


def section_of(page: str, name: str) -> str:
    start = page.index(f'data-queue="{html.escape(name)}"')
    end = page.find("<section", start)
    return page[start:end if end > 0 else len(page)]


def first_group(pattern: str, page: str) -> str:
    match = re.search(pattern, page)
    assert match is not None, f"{pattern} not in {page[:2000]}"
    return match.group(1)


def login_session(url: str, username: str, password: str) -> requests.Session:
    session = requests.Session()
    form = session.get(f"{url}/status/login/", timeout=10)
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert form.status_code == 200 and token, form.text
    done = session.post(f"{url}/status/login/", data={"username": username, "password": password,
                                                      "csrf": token.group(1)}, allow_redirects=False, timeout=10)
    assert done.status_code == 303 and done.headers["Location"] == "/status/", done.text
    return session


def test_without_credentials_the_page_sends_to_the_login_form(scenario: Scenario) -> None:
    url = scenario.server.url
    for attempt in (
        requests.get(f"{url}/status/", allow_redirects=False, timeout=10),
        requests.get(f"{url}/status", allow_redirects=True, timeout=10, headers={"Accept": "text/html"}),
        requests.get(f"{url}/status/?refresh=<x>", allow_redirects=False, timeout=10, auth=("staff", "wrong-pw")),
        requests.get(f"{url}/status/", allow_redirects=False, timeout=10, cookies={"sessionid": "forged"}),
        requests.head(f"{url}/status/", allow_redirects=False, timeout=10),
    ):
        if attempt.history:  # followed: the slash redirect, then the login redirect, then the form
            assert attempt.url.endswith("/status/login/") and attempt.status_code == 200
            assert '<form method="post" action="/status/login/"' in attempt.text
        else:
            assert attempt.status_code == 302, attempt.text
            assert attempt.headers["Location"] == "/status/login/"
        assert MAIN not in attempt.text and OTHER not in attempt.text


def test_login_form_checks_its_token_and_the_password(scenario: Scenario) -> None:
    url = scenario.server.url
    session = requests.Session()
    form = session.get(f"{url}/status/login/", timeout=10)
    assert form.status_code == 200 and "status_csrf" in session.cookies
    assert "script-src" not in form.headers["Content-Security-Policy"]  # default-src 'none': no script at all
    token = first_group(r'name="csrf" value="([^"]+)"', form.text)
    # A form posted from elsewhere (no or another token) logs nobody in.
    for fields in ({"username": STAFF[0], "password": STAFF[1]},
                   {"username": STAFF[0], "password": STAFF[1], "csrf": "other"}):
        refused = session.post(f"{url}/status/login/", data=fields, allow_redirects=False, timeout=10)
        assert refused.status_code == 400 and "login form expired" in refused.text
        assert "sessionid" not in refused.cookies
    token = first_group(r'name="csrf" value="([^"]+)"', refused.text)
    wrong = session.post(f"{url}/status/login/", data={"username": STAFF[0], "password": "nope", "csrf": token},
                         allow_redirects=False, timeout=10)
    assert wrong.status_code == 403 and "Incorrect username or password." in wrong.text
    assert "sessionid" not in wrong.cookies and 'value="staff"' in wrong.text
    garbage = session.post(f"{url}/status/login/", data=b"\xff\xfe=\xff", timeout=10,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert garbage.status_code == 400
    # The real thing: a session, the page, then logout ends the session.
    staff = login_session(url, *STAFF)
    page = staff.get(f"{url}/status/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    logout_token = first_group(r'name="token" value="([0-9a-f]+)"', page.text)
    forged = staff.post(f"{url}/status/logout/", data={"token": "0" * 64}, allow_redirects=False, timeout=10)
    assert forged.status_code == 400
    assert staff.get(f"{url}/status/", allow_redirects=False, timeout=10).status_code == 200
    out = staff.post(f"{url}/status/logout/", data={"token": logout_token}, allow_redirects=False, timeout=10)
    assert out.status_code == 303 and out.headers["Location"] == "/status/login/"
    sent_cookies = page.request.headers["Cookie"]
    assert isinstance(sent_cookies, str)  # requests builds the header as text
    again = requests.get(f"{url}/status/", cookies={"sessionid": sent_cookies.split(
        "sessionid=")[1].split(";")[0]}, allow_redirects=False, timeout=10)
    assert again.status_code == 302  # the session is gone on the server, not only in this browser


def test_classic_login_session_and_http_basic_work_too(scenario: Scenario) -> None:
    url = scenario.server.url
    classic = requests.Session()
    assert classic.post(f"{url}/xqueue/login/", data={"username": STAFF[0], "password": STAFF[1]},
                        timeout=10).json()["return_code"] == 0
    assert MAIN in queues_on(classic.get(f"{url}/status/", timeout=10).text)
    basic = requests.get(f"{url}/status/", auth=STAFF, timeout=10)
    assert basic.status_code == 200 and MAIN in queues_on(basic.text)
    assert "/status/logout/" not in basic.text  # nothing to log out of


def test_admin_sees_every_queue_with_its_numbers_and_the_outbox(scenario: Scenario) -> None:
    page = requests.get(f"{scenario.server.url}/status/", auth=(scenario.server.admin.username,
                                                                 scenario.server.admin.password), timeout=10).text
    shown = queues_on(page)
    assert {MAIN, OTHER, HOSTILE} <= shown.keys()
    main = shown[MAIN]
    numbers = (main["waiting"], main["in-flight"], main["graded"], main["failed"], main["dead"])
    assert numbers == ("2", "1", "3", "2", "1")
    assert re.fullmatch(r"\d+ s|\d+ min( \d+ s)?", main["oldest"]), main["oldest"]
    assert (shown[OTHER]["waiting"], shown[OTHER]["graded"]) == ("3", "0")
    assert shown[HOSTILE]["waiting"] == "0" and shown[HOSTILE]["oldest"] == "—"
    assert re.search(r'id="outbox-dead" class="bad">1<', page) and "Callback outbox (all queues)" in page
    main_html = section_of(page, MAIN)
    # The newest slice holds 2 graded + 1 error result and 2 failures (poison, dead letter).
    assert re.findall(r'class="bar (\w+)" data-value="(\d+)"', main_html) == [
        ("graded", "2"), ("errors", "1"), ("failed", "2")]
    assert "<td>127.0.0.1</td><td>1</td>" in main_html  # the grader holding the in-flight submission
    assert "submission" in main_html and "LMS returned status_code=500" in main_html


def test_an_account_sees_only_the_queues_it_may_pull_or_submit_to(scenario: Scenario) -> None:
    url = scenario.server.url
    page = login_session(url, *STAFF).get(f"{url}/status/", timeout=10).text
    assert set(queues_on(page)) == {MAIN, HOSTILE}
    assert OTHER not in page and "test-pull" not in page and "Callback outbox" not in page
    assert 'id="outbox' not in page
    # Nothing of the other queue leaks through totals either: its 3 waiting are in no number shown.
    assert sum(int(q["waiting"]) for q in queues_on(page).values()) == 2
    # A token narrowed to one queue narrows the page the same way.
    api = admin(scenario.server)
    token = api.post(f"{url}/api/v1/tokens", json={"username": STAFF[0], "pull_queues": [MAIN],
                                                  "submit_queues": []}, timeout=10).json()["token"]
    narrowed = requests.get(f"{url}/status/", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    assert set(queues_on(narrowed)) == {MAIN}
    empty = requests.get(f"{url}/status/", auth=NOBODY, timeout=10)
    assert empty.status_code == 200 and queues_on(empty.text) == {} and 'id="no-queues"' in empty.text
    assert MAIN not in empty.text and OTHER not in empty.text


def test_hostile_names_are_shown_as_text(scenario: Scenario) -> None:
    page = requests.get(f"{scenario.server.url}/status/", auth=STAFF, timeout=10).text
    assert HOSTILE not in page and "<script>" not in page and '<b id="pwned">' not in page
    assert f"<h2>{html.escape(HOSTILE)}</h2>" in page


def test_refresh_interval(scenario: Scenario) -> None:
    url = scenario.server.url
    assert '<meta http-equiv="refresh" content="30">' in requests.get(f"{url}/status/", auth=STAFF, timeout=10).text
    assert '<meta http-equiv="refresh" content="7">' in requests.get(
        f"{url}/status/?refresh=7", auth=STAFF, timeout=10).text
    for bad in ("1", "abc", "99999999999999999999", "<script>"):
        refused = requests.get(f"{url}/status/", params={"refresh": bad}, auth=STAFF, timeout=10)
        assert refused.status_code == 400 and "refresh must be a whole number" in refused.text
        assert "<script>" not in refused.text


def test_chart_slices_follow_the_result_times(scenario: Scenario, fake_lms: Any) -> None:
    server = scenario.server
    api = admin(server)
    assert api.put(f"{server.url}/api/v1/queues/course-history", timeout=10).status_code == 201
    lms, grader = LMSClient(server), GraderClient(server)
    ids = []
    for name in ("h1", "h2", "h3"):
        assert lms.submit("course-history", fake_lms.callback_url(name))[1][0] == 0
        item = grader.pull("course-history")
        assert item is not None
        assert grader.put_result(item["xqueue_header"], {"correct": True, "score": 1, "msg": ""})["return_code"] == 0
        ids.append(json.loads(item["xqueue_header"])["submission_id"])
    # Graded 12 and 58 minutes ago (clock shortcut: only the timestamps move), and 61 min ago: gone.
    for submission_id, minutes in zip(ids, (12, 58, 61), strict=True):
        sql(server, "UPDATE submissions SET return_time = now() - make_interval(mins => $2) WHERE id = $1",
            submission_id, minutes)
    page = requests.get(f"{server.url}/status/", auth=(server.admin.username, server.admin.password), timeout=10).text
    assert queues_on(page)["course-history"]["graded"] == "2"
    chart = section_of(page, "course-history").split('class="chart failures"')[0]
    slots = [float(x) for x in re.findall(r'class="base" x="([\d.]+)"', chart)]
    bars = [(float(x), int(v)) for v, x in re.findall(r'class="bar graded" data-value="(\d+)" x="([\d.]+)"', chart)]
    assert len(slots) == 12 and len(bars) == 2
    # 12 min ago is in the third slice from the right (10-15 min), 58 min ago in the leftmost.
    assert [slots.index(x) for x, _v in bars] == [0, 9]


def test_graders_waiting_in_a_long_poll_are_shown(scenario: Scenario, fake_lms: Any) -> None:
    server = scenario.server
    assert admin(server).put(f"{server.url}/api/v1/queues/course-idle", timeout=10).status_code == 201
    grader = GraderClient(server)
    got: list[Any] = []
    waiting = threading.Thread(target=lambda: got.append(grader.pull("course-idle", wait=10)))
    waiting.start()
    try:
        auth = (server.admin.username, server.admin.password)

        def shown() -> bool:
            page = requests.get(f"{server.url}/status/", auth=auth, timeout=10).text
            return "1 grader request(s) waiting" in section_of(page, "course-idle")

        wait_until(shown, "the long-polling grader on the page", timeout=8)
    finally:
        LMSClient(server).submit("course-idle", fake_lms.callback_url("wake"))  # ends the wait
        waiting.join(timeout=15)
    assert got and got[0] is not None


def test_status_queries_can_use_their_indexes(scenario: Scenario) -> None:
    """With sequential scans priced out, the plans read submissions through indexes only: the page's
    cost follows the last hour's activity and the pending work, not the whole history."""

    async def plans() -> list[str]:
        conn = await asyncpg.connect(scenario.server.settings.database_url)
        try:
            await conn.execute("SET enable_seqscan = off")
            out = []
            for name, args in (("activity", (None, 3600.0, 300.0)), ("graders", ([MAIN], 300.0)),
                               ("queue_summary", ([MAIN],)), ("dead_letters", (None, 5))):
                rows = await conn.fetch("EXPLAIN " + QUERIES[name], *args)
                out.append(name + "\n" + "\n".join(r[0] for r in rows))
            return out
        finally:
            await conn.close()

    for plan in scenario.server.run(plans()):
        assert "Seq Scan on submissions" not in plan, plan
        assert "Seq Scan on callbacks" not in plan, plan
    activity = scenario.server.run(plans())[0]
    assert "submissions_returned_idx" in activity and "submissions_finished_idx" in activity, activity
