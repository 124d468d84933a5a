"""Whatever arrives at the status routes, the answer is never a 500, and nothing is shown without login."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote_from_bytes

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xqueue_server.local_pg import LocalPostgres
from xqueue_server.testing import ServerThread, create_database

PATHS = ["/status/", "/status", "/status/login/", "/status/logout/", "/status/x/", "/status//"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
CONTENT_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=zz", "multipart/form-data",
                 "text/plain", "application/json", "application/x-www-form-urlencoded; charset=utf-16", ""]


@pytest.fixture(scope="module")
def server(postgres: LocalPostgres) -> Iterator[ServerThread]:
    thread = ServerThread.start(create_database(postgres.url), queues=("fuzz-secret-queue",))
    yield thread
    thread.stop()


text_bytes = st.binary(max_size=40).map(lambda b: quote_from_bytes(b, safe=""))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), path=st.sampled_from(PATHS),
       query=st.one_of(st.just(""), text_bytes.map(lambda v: f"refresh={v}"), text_bytes),
       body=st.one_of(st.binary(max_size=200),
                      st.builds(lambda u, p, c: f"username={u}&password={p}&csrf={c}".encode(),
                                text_bytes, text_bytes, text_bytes),
                      st.builds(lambda t: f"token={t}".encode(), text_bytes)),
       content_type=st.sampled_from(CONTENT_TYPES),
       cookie=st.one_of(st.just(""), st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                                            exclude_characters=";,\\\""), max_size=60)),
       basic=st.sampled_from([None, ("nobody-here", "x"), ("admin", "wrong-password")]))
def test_status_routes_never_fail(server: ServerThread, method: str, path: str, query: str, body: bytes,
                                  content_type: str, cookie: str, basic: tuple[str, str] | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    if cookie:
        headers["Cookie"] = f"sessionid={cookie}; status_csrf={cookie}"
    response = requests.request(method, f"{server.url}{path}" + (f"?{query}" if query else ""), data=body,
                                headers=headers, auth=basic, allow_redirects=False, timeout=10)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    # No valid credentials were sent: no queue shows, whatever the answer.
    assert "fuzz-secret-queue" not in response.text
    if path == "/status/login/" and method == "GET" and response.status_code == 200:
        assert response.headers["Content-Type"].startswith("text/html")
