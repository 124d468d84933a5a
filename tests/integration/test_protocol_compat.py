"""The compatibility checklist (xqueue-protocol.md §11) and every reply string of §2, over real HTTP."""

from __future__ import annotations

import json

import requests

from tests.integration.clients import GRADE, GraderClient, LMSClient
from tests.waiting import wait_until_blocking
from xqueue_server.testing import FakeLMS, ServerThread

CLASSIC_ROUTES = ["login", "logout", "status", "submit", "get_queuelen", "get_submission", "put_result"]


# --- checklist 1: exactly the seven routes, with trailing slash; 301 for the slashless form


def test_all_seven_routes_exist_with_trailing_slash(xqueue: ServerThread) -> None:
    for route in CLASSIC_ROUTES:
        response = requests.get(f"{xqueue.url}/xqueue/{route}/", allow_redirects=False, timeout=10)
        assert response.status_code in (200, 302), (route, response.status_code)


def test_missing_trailing_slash_is_a_301_to_the_slashed_url(xqueue: ServerThread) -> None:
    for route in CLASSIC_ROUTES:
        response = requests.get(f"{xqueue.url}/xqueue/{route}", allow_redirects=False, timeout=10)
        assert response.status_code == 301, route
        assert response.headers["Location"].endswith(f"/xqueue/{route}/")


def test_unknown_path_is_upstreams_404_page(xqueue: ServerThread) -> None:
    response = requests.get(f"{xqueue.url}/xqueue/nothing-here/", timeout=10)
    assert response.status_code == 404
    assert response.text == "Xqueue 404 error."


# --- checklist 2: envelope, HTTP 200, content types


def test_status_is_ok_without_login(xqueue: ServerThread) -> None:
    response = requests.get(f"{xqueue.url}/xqueue/status/", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"return_code": 0, "content": "OK"}


def test_submit_content_is_a_decimal_string_and_queuelen_an_int(
    xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS
) -> None:
    lms = LMSClient(xqueue)
    _, (code, content) = lms.submit(queue_name, fake_lms.callback_url("a"))
    assert (code, content) == (0, "1")
    _, (code, content) = lms.submit(queue_name, fake_lms.callback_url("b"))
    assert (code, content) == (0, "2")
    reply = GraderClient(xqueue).queue_length(queue_name)
    assert reply == {"return_code": 0, "content": 2}
    assert isinstance(reply["content"], int)


def test_get_submission_content_is_a_json_string_with_nested_json_strings(
    xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS
) -> None:
    body = json.dumps({"grader_payload": '{"grader": "p1/grade.py"}', "student_response": "x = 1",
                       "student_info": json.dumps({"anonymous_student_id": "s1"})})
    LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("a"), body)
    reply = GraderClient(xqueue).get_submission(queue_name)
    assert reply["return_code"] == 0
    assert isinstance(reply["content"], str)
    content = json.loads(reply["content"])
    assert set(content) == {"xqueue_header", "xqueue_body", "xqueue_files"}
    header = json.loads(content["xqueue_header"])
    assert set(header) == {"submission_id", "submission_key"}
    assert isinstance(header["submission_id"], int)
    assert len(header["submission_key"]) == 32
    assert content["xqueue_body"] == body  # verbatim
    assert json.loads(content["xqueue_files"]) == {}


# --- checklist 3: 302 to login, login_required, session cookie, no CSRF


def test_unauthenticated_calls_redirect_to_login_with_next(xqueue: ServerThread) -> None:
    for route, method in (("submit", "POST"), ("get_queuelen", "GET"), ("get_submission", "GET"),
                          ("put_result", "POST")):
        response = requests.request(method, f"{xqueue.url}/xqueue/{route}/?queue_name=x", allow_redirects=False,
                                    timeout=10)
        assert response.status_code == 302, route
        assert response.headers["Location"] == f"/xqueue/login/?next=/xqueue/{route}/%3Fqueue_name%3Dx"


def test_lms_style_client_follows_redirect_to_login_required_then_logs_in(
    xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS
) -> None:
    session = requests.Session()
    header = json.dumps({"lms_callback_url": fake_lms.callback_url("a"), "lms_key": "k", "queue_name": queue_name})
    # requests follows the 302 and turns the POST into a GET of the login page: the LMS's re-login flag.
    first = session.post(f"{xqueue.url}/xqueue/submit/", data={"xqueue_header": header, "xqueue_body": ""},
                         timeout=10)
    assert first.status_code == 200
    assert first.json() == {"return_code": 1, "content": "login_required"}
    code, content = LMSClient(xqueue).send(header, "")
    assert (code, content) == (0, "1")


def test_get_login_page_answers_login_required_and_sets_csrf_cookie(xqueue: ServerThread) -> None:
    response = requests.get(f"{xqueue.url}/xqueue/login/", timeout=10)
    assert response.json() == {"return_code": 1, "content": "login_required"}
    assert "csrftoken" in response.cookies


def test_login_replies(xqueue: ServerThread) -> None:
    url = f"{xqueue.url}/xqueue/login/"
    ok = requests.post(url, data={"username": "lms", "password": "lms-password"}, timeout=10)
    assert ok.json() == {"return_code": 0, "content": "Logged in"}
    assert "sessionid" in ok.cookies
    bad = requests.post(url, data={"username": "lms", "password": "wrong"}, timeout=10)
    assert bad.json() == {"return_code": 1, "content": "Incorrect login credentials"}
    unknown = requests.post(url, data={"username": "nobody", "password": "x"}, timeout=10)
    assert unknown.json() == {"return_code": 1, "content": "Incorrect login credentials"}
    no_password = requests.post(url, data={"username": "lms"}, timeout=10)
    assert no_password.json() == {"return_code": 1, "content": "Insufficient login info"}
    # Upstream crashed with HTTP 500 here (password without username).
    no_username = requests.post(url, data={"password": "lms-password"}, timeout=10)
    assert no_username.status_code == 200
    assert no_username.json() == {"return_code": 1, "content": "Insufficient login info"}


def test_session_cookie_is_httponly_and_logout_ends_it(xqueue: ServerThread, queue_name: str) -> None:
    session = requests.Session()
    response = session.post(f"{xqueue.url}/xqueue/login/", data={"username": "lms", "password": "lms-password"},
                            timeout=10)
    assert "httponly" in response.headers["Set-Cookie"].lower()
    reply = session.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": queue_name}, timeout=10)
    assert reply.json()["return_code"] == 0
    bye = session.post(f"{xqueue.url}/xqueue/logout/", timeout=10)
    assert bye.json() == {"return_code": 0, "content": "Goodbye"}
    after = session.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": queue_name},
                        allow_redirects=False, timeout=10)
    assert after.status_code == 302


def test_logout_without_session_says_goodbye(xqueue: ServerThread) -> None:
    for method in ("GET", "POST"):
        response = requests.request(method, f"{xqueue.url}/xqueue/logout/", timeout=10)
        assert response.json() == {"return_code": 0, "content": "Goodbye"}


def test_no_csrf_token_needed_on_mutating_endpoints(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    # LMSClient and GraderClient never send a CSRF token or Referer.
    LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("a"))
    grader = GraderClient(xqueue)
    item = grader.pull(queue_name)
    assert item is not None
    assert grader.put_result(item["xqueue_header"], GRADE) == {"return_code": 0, "content": ""}


def test_http_basic_credentials_are_accepted(xqueue: ServerThread, queue_name: str) -> None:
    response = requests.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": queue_name},
                            auth=("grader", "grader-password"), allow_redirects=False, timeout=10)
    assert response.json() == {"return_code": 0, "content": 0}
    wrong = requests.get(f"{xqueue.url}/xqueue/get_queuelen/", params={"queue_name": queue_name},
                         auth=("grader", "nope"), allow_redirects=False, timeout=10)
    assert wrong.status_code == 302


# --- checklist 4: urlencoded and multipart; field name = file name; downloadable URLs


def test_multipart_files_are_stored_under_their_field_name_and_downloadable(
    xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS
) -> None:
    files = {"solution.py": b"def f():\n    return 42\n", "data.csv": b"a,b\n1,2\n"}
    _, (code, _) = LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("a"), "", files=files)
    assert code == 0
    item = GraderClient(xqueue).pull(queue_name)
    assert item is not None
    urls = json.loads(item["xqueue_files"])
    assert set(urls) == set(files)
    for name, url in urls.items():
        assert url.startswith("http://127.0.0.1:")
        assert requests.get(url, timeout=10).content == files[name]


# --- submit reply strings


def test_submit_reply_strings(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    lms = LMSClient(xqueue)
    lms._login()
    get = lms.session.get(f"{xqueue.url}/xqueue/submit/", timeout=10)
    assert get.json() == {"return_code": 1, "content": "Queue requests should use HTTP POST"}
    assert lms.send("not json", "") == (1, "Queue request has invalid format")
    assert lms.send("[1, 2]", "") == (1, "Queue request has invalid format")
    assert lms.send(json.dumps({"lms_key": "k", "queue_name": queue_name}), "") == (
        1, "Queue request has invalid format")
    missing_body = lms.session.post(f"{xqueue.url}/xqueue/submit/", data={"xqueue_header": "{}"}, timeout=10)
    assert missing_body.json() == {"return_code": 1, "content": "Queue request has invalid format"}
    header = {"lms_callback_url": fake_lms.callback_url("a"), "lms_key": "k", "queue_name": "no-such-queue"}
    assert lms.send(header, "") == (1, "Queue 'no-such-queue' not found")
    # Upstream accepted a relative callback URL and crashed at put_result; we refuse it up front.
    code, content = lms.send({"lms_callback_url": "/relative", "lms_key": "k", "queue_name": queue_name}, "")
    assert code == 1
    assert content.startswith("Queue request has invalid format")


def test_get_queuelen_reply_strings(xqueue: ServerThread, queue_name: str) -> None:
    grader = GraderClient(xqueue)
    missing = grader._request("GET", "/xqueue/get_queuelen/")
    assert missing == {"return_code": 1, "content": "'get_queuelen' must provide parameter 'queue_name'"}
    unknown = grader.queue_length("no-such-queue")
    assert unknown["return_code"] == 1
    assert unknown["content"].startswith("Valid queue names are: ")
    assert queue_name in unknown["content"].removeprefix("Valid queue names are: ").split(", ")


def test_get_submission_reply_strings(xqueue: ServerThread, queue_name: str) -> None:
    grader = GraderClient(xqueue)
    assert grader._request("GET", "/xqueue/get_submission/") == {
        "return_code": 1, "content": "'get_submission' must provide parameter 'queue_name'"}
    assert grader.get_submission("no-such-queue") == {"return_code": 1, "content": "Queue 'no-such-queue' not found"}
    assert grader.get_submission(queue_name) == {"return_code": 1, "content": f"Queue '{queue_name}' is empty"}


def test_put_result_reply_strings(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    grader = GraderClient(xqueue)
    get = grader._request("GET", "/xqueue/put_result/")
    assert get == {"return_code": 1, "content": "'put_result' must use HTTP POST"}
    assert grader.put_result("not json", GRADE) == {"return_code": 1, "content": "Incorrect reply format"}
    assert grader.put_result(json.dumps({"submission_id": 1}), GRADE) == {
        "return_code": 1, "content": "Incorrect reply format"}
    no_body = grader._request("POST", "/xqueue/put_result/", data={"xqueue_header": "{}"})
    assert no_body == {"return_code": 1, "content": "Incorrect reply format"}
    assert grader.put_result(json.dumps({"submission_id": 2**40, "submission_key": "x"}), GRADE) == {
        "return_code": 1, "content": "Submission does not exist"}
    # Upstream answered HTTP 500 for a non-numeric id.
    bad_id = grader.put_result(json.dumps({"submission_id": "abc", "submission_key": "x"}), GRADE)
    assert bad_id["return_code"] == 1
    assert bad_id["content"].startswith("Incorrect reply format")
    LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("a"))
    item = grader.pull(queue_name)
    assert item is not None
    submission_id = json.loads(item["xqueue_header"])["submission_id"]
    wrong_key = json.dumps({"submission_id": submission_id, "submission_key": "0" * 32})
    assert grader.put_result(wrong_key, GRADE) == {"return_code": 1, "content": "Incorrect key for submission"}
    assert grader.put_result(item["xqueue_header"], GRADE) == {"return_code": 0, "content": ""}


# --- checklist 5: FIFO, hidden while pulled, callback is a form POST of header + grader body


def test_pull_is_fifo_and_pulled_items_are_hidden(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    lms = LMSClient(xqueue)
    keys = [lms.submit(queue_name, fake_lms.callback_url(f"p{i}"), f"body-{i}")[0] for i in range(3)]
    grader = GraderClient(xqueue)
    bodies = []
    for expected_left in (2, 1, 0):
        item = grader.pull(queue_name)
        assert item is not None
        bodies.append(item["xqueue_body"])
        assert grader.queue_length(queue_name)["content"] == expected_left
    assert bodies == ["body-0", "body-1", "body-2"]
    assert grader.pull(queue_name) is None
    assert len(keys) == 3


def test_callback_is_a_form_post_of_the_original_header_and_the_grader_body(
    xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS
) -> None:
    key, _ = LMSClient(xqueue).submit(queue_name, fake_lms.callback_url("cb"), "x")
    grader = GraderClient(xqueue)
    item = grader.pull(queue_name)
    assert item is not None
    reply = json.dumps({"correct": False, "score": 0.5, "msg": "<div>half</div>"})
    grader.put_result(item["xqueue_header"], reply)
    callbacks = fake_lms.wait_for(lambda cbs: any(c.xqueue_header.get("lms_key") == key for c in cbs))
    callback = next(c for c in callbacks if c.xqueue_header["lms_key"] == key)
    assert callback.raw_body == reply  # forwarded verbatim
    assert callback.xqueue_header == {"lms_callback_url": fake_lms.callback_url("cb"), "lms_key": key,
                                      "queue_name": queue_name}
    assert callback.path == "/courses/demo/xqueue/1/cb/score_update"


def test_latest_submission_wins_for_the_same_callback_url(
    xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS
) -> None:
    lms = LMSClient(xqueue)
    url = fake_lms.callback_url("same-problem")
    lms.submit(queue_name, url, "first")
    _, (_, length) = lms.submit(queue_name, url, "second")
    assert length == "1"
    grader = GraderClient(xqueue)
    item = grader.pull(queue_name)
    assert item is not None and item["xqueue_body"] == "second"
    assert grader.pull(queue_name) is None


def test_a_submission_being_graded_is_not_superseded(xqueue: ServerThread, queue_name: str, fake_lms: FakeLMS) -> None:
    lms = LMSClient(xqueue)
    url = fake_lms.callback_url("busy")
    first_key, _ = lms.submit(queue_name, url, "first")
    grader = GraderClient(xqueue)
    first = grader.pull(queue_name)
    assert first is not None
    lms.submit(queue_name, url, "second")
    assert grader.put_result(first["xqueue_header"], GRADE)["return_code"] == 0
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header.get("lms_key") == first_key for c in cbs))
    second = grader.pull(queue_name)
    assert second is not None and second["xqueue_body"] == "second"


def test_only_http_200_counts_as_delivered(xqueue_factory, fake_lms: FakeLMS) -> None:
    server = xqueue_factory(callback_backoff_base_seconds=0.05, callback_backoff_max_seconds=0.2)
    fake_lms.status = 404  # e.g. the course structure changed
    key, _ = LMSClient(server).submit("test-pull", fake_lms.callback_url("x"))
    grader = GraderClient(server)
    item = grader.pull("test-pull")
    assert item is not None
    grader.put_result(item["xqueue_header"], GRADE)
    deadline_attempts = 3
    wait_until_blocking(lambda: fake_lms.attempts >= deadline_attempts, 10, "three callback attempts")
    assert fake_lms.attempts >= deadline_attempts  # retried, because 404 is not an acknowledgement
    fake_lms.status = 200
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header.get("lms_key") == key for c in cbs))


def test_long_headers_and_callback_urls_are_kept_whole(xqueue: ServerThread, queue_name: str,
                                                       fake_lms: FakeLMS) -> None:
    # Upstream truncated the callback URL to 128 characters and failed on headers over 1024.
    long_url = fake_lms.callback_url("p" * 300)
    header = {"lms_callback_url": long_url, "lms_key": "k" * 40, "queue_name": queue_name, "extra": "x" * 5000}
    code, _ = LMSClient(xqueue).send(header, "body")
    assert code == 0
    grader = GraderClient(xqueue)
    item = grader.pull(queue_name)
    assert item is not None
    grader.put_result(item["xqueue_header"], GRADE)
    callback = fake_lms.wait_for(lambda cbs: any(c.xqueue_header.get("lms_key") == "k" * 40 for c in cbs))[-1]
    assert callback.path.endswith("p" * 300 + "/score_update")
    assert callback.xqueue_header["extra"] == "x" * 5000
