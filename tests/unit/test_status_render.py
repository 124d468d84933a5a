"""The status page's pure parts: bucket assembly, durations, charts, escaping, the empty state, scope."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest

from xqueue_server.db import Account
from xqueue_server.status_api import build_queues, parse_refresh, visible_names
from xqueue_server.status_page import (
    ERROR_COLOUR,
    FAILED_COLOUR,
    GRADED_COLOUR,
    Bucket,
    DeadLetter,
    GraderSeen,
    Outbox,
    QueueStatus,
    StatusPage,
    assemble_buckets,
    bar_chart,
    format_age,
    render_login,
    render_status,
)

HOSTILE = "<script>alert(1)</script>&\"'"


class Tree(HTMLParser):
    """Collects start tags and text, so tests check what a browser would build from the markup."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> Tree:
    tree = Tree()
    tree.feed(markup)
    tree.close()
    return tree


def page(*queues: QueueStatus, **overrides: Any) -> StatusPage:
    values: dict[str, Any] = {
        "username": "staff", "is_admin": False, "generated_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "refresh_seconds": 30, "bucket_seconds": 300, "window_seconds": 3600, "graders_seen_seconds": 300,
        "queues": queues,
    }
    values.update(overrides)
    return StatusPage(**values)


def queue(name: str = "course-a", **overrides: Any) -> QueueStatus:
    values: dict[str, Any] = {
        "name": name, "waiting": 7, "in_flight": 2, "oldest_waiting_seconds": 125.0,
        "buckets": assemble_buckets([(0, "graded", 4), (0, "error", 1), (2, "failed", 3)], 12),
    }
    values.update(overrides)
    return QueueStatus(**values)


def test_buckets_are_placed_oldest_first_and_out_of_range_rows_dropped() -> None:
    buckets = assemble_buckets([(0, "graded", 5), (0, "error", 2), (11, "failed", 1), (3, "graded", 4),
                                (12, "graded", 99), (-1, "graded", 99), (0, "unknown", 99)], 12)
    assert len(buckets) == 12
    assert buckets[-1] == Bucket(graded=5, errors=2, failed=0)  # bucket 0 = the newest, on the right
    assert buckets[0] == Bucket(failed=1)
    assert buckets[-4] == Bucket(graded=4)
    assert sum(b.results for b in buckets) == 11 and sum(b.failed for b in buckets) == 1


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (0, "0 s"), (-3, "0 s"), (42.9, "42 s"), (60, "1 min"), (185, "3 min 5 s"), (300, "5 min"),
    (3600, "1 h"), (7800, "2 h 10 min"), (86400 * 3 + 3600 * 4, "3 d 4 h"), (86400, "1 d"),
])
def test_format_age(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_bar_chart_heights_follow_the_numbers() -> None:
    buckets = [Bucket(graded=2), Bucket(), Bucket(graded=4, errors=4)]
    svg = bar_chart("Graded", buckets, (("graded", GRADED_COLOUR), ("errors", ERROR_COLOUR)), 300, "throughput")
    bars = [(t, a) for t, a in parse(svg).tags if t == "rect" and "bar" in (a.get("class") or "")]
    assert [(a["class"], a["data-value"], a["fill"]) for _t, a in bars] == [
        ("bar graded", "2", GRADED_COLOUR), ("bar graded", "4", GRADED_COLOUR), ("bar errors", "4", ERROR_COLOUR)]
    heights = [float(a["height"] or 0) for _t, a in bars]
    # The tallest stack (8) fills the chart (64 px less a 4 px margin); 2 is a quarter of it.
    assert heights[1] + heights[2] == pytest.approx(60)
    assert heights[0] == pytest.approx(15)
    # Stacked: the error segment sits on top of the graded one in the same slot.
    assert float(bars[2][1]["y"] or 0) + heights[2] == pytest.approx(float(bars[1][1]["y"] or 0))
    assert "Graded: 10 in the last 15 min, at most 8 per 5 min" in svg


def test_an_empty_chart_has_slots_but_no_bars() -> None:
    svg = bar_chart("Failed", [Bucket()] * 12, (("failed", FAILED_COLOUR),), 300, "failures")
    tags = parse(svg).tags
    assert sum(1 for t, a in tags if t == "rect" and a.get("class") == "base") == 12
    assert not any("bar" in (a.get("class") or "") for t, a in tags if t == "rect")
    assert "max 0/5 min" in svg


def test_page_shows_the_numbers() -> None:
    q = queue(dead_letters=9, graders=(GraderSeen("10.0.0.7", 2, 12.0),), long_poll_waiters=3,
              newest_dead=(DeadLetter(5, 77, "grade", 4, 3700.0, "LMS returned status_code=500"),))
    tree = parse(render_status(page(q)))
    text = " ".join(" ".join(tree.text).split())
    for expected in ("WAITING 7".lower(), "oldest waiting 2 min 5 s", "in flight 2", "graded (60 min) 5",
                     "failed (60 min) 3", "dead letters 9", "10.0.0.7 2 12 s ago",
                     "3 grader request(s) waiting", "submission 77 (grade), 4 tries, 1 h 1 min old",
                     "LMS returned status_code=500", "and 8 more"):
        assert expected.lower() in text.lower(), expected
    ids = {a.get("id"): a for _t, a in tree.tags if a.get("id")}
    assert {"q0-waiting", "q0-in-flight", "q0-graded", "q0-failed", "q0-dead"} <= ids.keys()
    assert ids["q0-failed"].get("class") == "bad"
    # Refreshes itself without JavaScript, and is laid out for phones.
    metas = [a for t, a in tree.tags if t == "meta"]
    assert {"http-equiv": "refresh", "content": "30"} in metas
    assert any(a.get("name") == "viewport" and "width=device-width" in (a.get("content") or "") for a in metas)
    assert not any(t == "script" for t, _a in tree.tags)


def test_everything_from_outside_is_escaped() -> None:
    q = queue(HOSTILE, graders=(GraderSeen(HOSTILE, 1, 1.0),),
              newest_dead=(DeadLetter(1, 2, HOSTILE, 1, 1.0, HOSTILE),), dead_letters=1)
    markup = render_status(page(q, username=HOSTILE, logout_token=HOSTILE))
    tree = parse(markup)
    assert not any(t == "script" for t, _a in tree.tags)
    assert "<script>" not in markup
    assert "".join(tree.text).count(HOSTILE) >= 4  # heading, grader, kind, error, user: as plain text
    sections = [a for t, a in tree.tags if t == "section"]
    assert sections[0]["data-queue"] == HOSTILE  # the attribute round-trips unchanged
    login = render_login(HOSTILE, HOSTILE, HOSTILE)
    assert "<script>" not in login and not any(t == "script" for t, _a in parse(login).tags)


def test_long_errors_are_clipped() -> None:
    q = queue(newest_dead=(DeadLetter(1, 2, "grade", 1, 1.0, "x" * 5000),), dead_letters=1)
    markup = render_status(page(q))
    assert "x" * 159 + "…" in markup and "x" * 161 not in markup


def test_empty_state() -> None:
    tree = parse(render_status(page()))
    assert any(a.get("id") == "no-queues" for _t, a in tree.tags)
    assert "No queues to show" in "".join(tree.text)
    assert not any(t == "svg" for t, _a in tree.tags)


def test_outbox_only_when_given_and_admin_label() -> None:
    plain = render_status(page(queue()))
    assert "Callback outbox" not in plain
    admin = render_status(page(queue(), is_admin=True, outbox=Outbox(4, 65.0, 2)))
    text = " ".join(" ".join(parse(admin).text).split())
    assert "Callback outbox (all queues)" in text and "Pending 4" in text and "Oldest pending 1 min 5 s" in text
    assert "admin: every queue" in text


def test_logout_button_only_with_a_session_token() -> None:
    assert "/status/logout/" not in render_status(page(queue()))
    markup = render_status(page(queue(), logout_token="abc"))
    assert re.search(r'<form method="post" action="/status/logout/"><input type="hidden" name="token" value="abc">',
                     markup)


def account(admin: bool = False, pull: tuple[str, ...] | None = None,
            submit: tuple[str, ...] | None = None) -> Account:
    return Account(id=1, username="u", is_admin=admin, pull_queues=pull, submit_queues=submit)


def test_scope_is_what_the_account_may_pull_or_submit() -> None:
    names = ["a", "b", "c", "d"]
    assert visible_names(account(admin=True, pull=()), names) is None
    assert visible_names(account(pull=("a",), submit=("c",)), names) == ["a", "c"]
    assert visible_names(account(pull=(), submit=()), names) == []
    # NULL permissions mean every queue (upstream's unrestricted accounts).
    assert visible_names(account(pull=None, submit=()), names) == names
    assert visible_names(account(pull=("zz",), submit=None), names) == names


def test_build_queues_joins_rows_by_queue() -> None:
    summary = [{"name": "a", "waiting": 1, "in_flight": 0, "oldest_waiting_seconds": 3.0},
               {"name": "b", "waiting": 0, "in_flight": 0, "oldest_waiting_seconds": None}]
    activity = [{"queue_name": "a", "bucket": 0, "outcome": "graded", "n": 2},
                {"queue_name": "b", "bucket": 11, "outcome": "failed", "n": 1}]
    graders = [{"queue_name": "a", "grader_id": "10.1.1.1", "in_flight": 1, "last_pull_age_seconds": 4.0}]
    dead = [{"queue_name": "b", "total": 7, "id": 3, "submission_id": 9, "kind": "grade", "attempts": 2,
             "age_seconds": 5.0, "last_error": None}]
    a, b = build_queues(summary, activity, graders, dead, {"a": 2})
    assert (a.graded_total, a.failed_total, a.dead_letters, a.long_poll_waiters) == (2, 0, 0, 2)
    assert a.graders == (GraderSeen("10.1.1.1", 1, 4.0),) and a.buckets[-1] == Bucket(graded=2)
    assert (b.graded_total, b.failed_total, b.dead_letters, b.long_poll_waiters) == (0, 1, 7, 0)
    assert b.buckets[0] == Bucket(failed=1) and b.newest_dead[0].last_error == ""


@pytest.mark.parametrize("raw", ["4", "3601", "x", "", "10.5", "\u0661\u0660", "-10"])
def test_refresh_parameter_is_checked(raw: str) -> None:
    with pytest.raises(ValueError, match="refresh must be a whole number of seconds from 5 to 3600"):
        parse_refresh(raw)


def test_refresh_parameter_default_and_values() -> None:
    assert parse_refresh(None) == 30 and parse_refresh("5") == 5 and parse_refresh("3600") == 3600
