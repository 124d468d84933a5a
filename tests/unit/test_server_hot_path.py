"""The per-request shortcuts of the server (metrics children, log records, log timestamps, text
checks, the session cookie) give the same results as the long way."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import generate_latest

from xqueue_common.jsonlog import JsonFormatter, timestamp
from xqueue_server import logs
from xqueue_server.auth import _session_cookie
from xqueue_server.metrics import Metrics
from xqueue_server.validation import text_problem


def _exported(metrics: Metrics, prefix: str) -> list[str]:
    return [line for line in generate_latest(metrics.registry).decode().splitlines() if line.startswith(prefix)]


def test_a_cached_counter_child_counts_like_a_fresh_one() -> None:
    metrics = Metrics()
    first = metrics.submissions.labels("q1")
    assert metrics.submissions.labels("q1") is first
    first.inc()
    metrics.submissions.labels("q1").inc()
    metrics.submissions.labels("q2").inc(3)
    metrics.results.labels(outcome="recorded").inc()  # by keyword: prometheus_client's own path
    assert sorted(_exported(metrics, "xqueue_submissions_total")) == [
        'xqueue_submissions_total{queue="q1"} 2.0', 'xqueue_submissions_total{queue="q2"} 3.0']
    assert _exported(metrics, "xqueue_results_total") == ['xqueue_results_total{outcome="recorded"} 1.0']
    metrics.submissions.remove("q1")
    metrics.submissions.labels("q1").inc()  # a removed child is not resurrected from the cache
    assert 'xqueue_submissions_total{queue="q1"} 1.0' in _exported(metrics, "xqueue_submissions_total")


def test_request_durations_are_labelled_by_route_method_and_status() -> None:
    metrics = Metrics()
    resource = web.PlainResource("/xqueue/submit/")
    metrics.observe_request(resource, "POST", 200, 0.002)
    metrics.observe_request(resource, "POST", 200, 0.003)
    metrics.observe_request(None, "BREW", 404, 0.001)  # no route, and a method nobody knows
    counts = sorted(_exported(metrics, "xqueue_http_request_duration_seconds_count"))
    assert counts == [
        'xqueue_http_request_duration_seconds_count{method="OTHER",route="unmatched",status="404"} 1.0',
        'xqueue_http_request_duration_seconds_count{method="POST",route="/xqueue/submit/",status="200"} 2.0',
    ]
    for method in ("X1", "X2", "X3"):
        metrics.observe_request(None, method, 404, 0.001)
    assert len(metrics._request_children) == 2  # any number of odd methods stays one label value


def test_timestamps_follow_the_clock_across_seconds() -> None:
    for created in (1_700_000_000.999, 1_700_000_001.0, 1_700_000_001.5, 1_699_999_999.25, 1_700_000_000.999):
        record = logging.LogRecord("xq", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000)
        expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{record.msecs:03d}Z"
        assert timestamp(record) == expected


def test_server_log_records_skip_caller_lookup_and_keep_the_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    # Restore the logging module's switches and root handlers for the tests that follow.
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    monkeypatch.setattr(logging, "logAsyncioTasks", getattr(logging, "logAsyncioTasks", True), raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    logs.setup_logging("INFO", "json")
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    logging.getLogger("xqueue.classic").info("submission queued", extra={"fields": {"submission_id": 7}})
    logging.getLogger("xqueue.classic").debug("not at INFO")
    record = logging.getLogger("xqueue.classic").makeRecord("xqueue.classic", logging.INFO, "f", 1, "m", (), None)
    assert record.threadName is None and record.processName is None
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert list(entry) == ["ts", "level", "logger", "msg", "submission_id"]
    assert (entry["level"], entry["logger"], entry["msg"], entry["submission_id"]) == (
        "info", "xqueue.classic", "submission queued", 7)
    assert JsonFormatter().format(record)  # a record without caller details still formats


@pytest.mark.parametrize(("value", "problem"), [
    ("sessionid=abc", None), ("caf\u00e9", None), ("a\x00b", "contains a NUL character"),
    ("x\ud800", "is not valid Unicode (lone surrogate)"), ("\x00", "contains a NUL character"),
])
def test_text_problem_on_ascii_and_other_text(value: str, problem: str | None) -> None:
    assert text_problem(value) == problem


@pytest.mark.parametrize("cookie", [
    None, "", "other=1", "sessionid=abc-DEF_123", "csrftoken=x; sessionid=abc-DEF_123; lang=en",
    'sessionid="quoted value"; a=b', "sessionid=first; sessionid=second", "sessionid=", "xsessionid=1; sessionid=ok",
    "sessionid=a%20b", "lang=en; sessionid = spaced ",
])
def test_session_cookie_reads_like_aiohttps_cookie_parser(cookie: str | None) -> None:
    headers = {} if cookie is None else {"Cookie": cookie}
    request = make_mocked_request("GET", "/", headers=headers)
    assert _session_cookie(request) == request.cookies.get("sessionid")
