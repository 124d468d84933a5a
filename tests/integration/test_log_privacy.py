"""The server's logs hold no request data: no student code, grader replies, file names or passwords, also not
inside database errors (PostgreSQL puts row values into an error's detail; only the SQLSTATE and the exception
class may be logged).

The logs are captured as the server writes them in production (the JSON formatter), from a real server, while
a real PostgreSQL raises errors whose messages and details quote the submitted data.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import requests

from tests.integration.clients import GraderClient, LMSClient
from tests.integration.log_capture import CapturedLogs, captured_logs  # noqa: F401 (fixture)
from xqueue_server.testing import FakeLMS, ServerThread

STUDENT_CODE = "print('student-secret-7f3a')"
GRADER_REPLY = "grader-secret-91bc"
FILE_NAME = "secret-name-55d1.py"
PASSWORD = "password-secret-c0de"
SECRETS = ("student-secret-7f3a", GRADER_REPLY, "secret-name-55d1", PASSWORD, "password-secret")


async def install_tattletale_triggers(database_url: str) -> None:
    """Triggers that refuse marked rows with an error whose message and DETAIL quote the row, like a
    constraint violation's "Failing row contains (...)"."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("""
            CREATE FUNCTION tattle() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE row_text text := row_to_json(NEW)::text;
            BEGIN
                IF row_text LIKE '%TATTLE%' THEN
                    RAISE EXCEPTION 'refused row %', row_text USING DETAIL = 'Failing row contains ' || row_text,
                        HINT = row_text;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER tattle BEFORE INSERT ON submissions FOR EACH ROW EXECUTE FUNCTION tattle();
            CREATE TRIGGER tattle BEFORE INSERT ON callbacks FOR EACH ROW EXECUTE FUNCTION tattle();""")
    finally:
        await conn.close()


def test_logs_hold_no_request_data_even_from_database_errors(xqueue_factory, fake_lms: FakeLMS,
                                                             captured_logs: CapturedLogs) -> None:  # noqa: F811
    server: ServerThread = xqueue_factory()
    asyncio.run(install_tattletale_triggers(server.settings.database_url or ""))
    admin = (server.admin.username, server.admin.password)
    # Passwords: set through the admin API, a failed login, a good login, HTTP Basic.
    created = requests.put(f"{server.url}/api/v1/users/course-lms", json={"password": PASSWORD}, auth=admin, timeout=10)
    assert created.status_code == 201
    assert LMSClient(server, "course-lms", PASSWORD + "-wrong")._login()["return_code"] == 1
    lms = LMSClient(server, "course-lms", PASSWORD)
    # A normal cycle: student code in the body and in a named file, a grader reply.
    key, (code, _) = lms.submit("test-pull", fake_lms.callback_url("ok"), STUDENT_CODE,
                                files={FILE_NAME: STUDENT_CODE.encode()})
    assert code == 0
    grader = GraderClient(server)
    item = grader.pull("test-pull")
    assert item is not None
    assert grader.put_result(item["xqueue_header"], {"correct": True, "score": 1, "msg": GRADER_REPLY})[
        "return_code"] == 0
    fake_lms.wait_for(lambda cbs: any(c.xqueue_header["lms_key"] == key for c in cbs))
    # Database errors that quote the row: a refused submission and a refused result.
    header = json.dumps({"lms_callback_url": fake_lms.callback_url("t"), "lms_key": "k", "queue_name": "test-pull"})
    refused = requests.post(f"{server.url}/xqueue/submit/", auth=("course-lms", PASSWORD), timeout=10,
                            data={"xqueue_header": header, "xqueue_body": "TATTLE " + STUDENT_CODE},
                            files={FILE_NAME: b"x"})
    assert refused.status_code == 500 and refused.json()["return_code"] == 1
    assert STUDENT_CODE not in refused.text and "TATTLE" not in refused.text
    _, (code, _) = lms.submit("test-pull", fake_lms.callback_url("t2"), "fine")
    assert code == 0
    item = grader.pull("test-pull")
    assert item is not None
    response = grader.session.post(f"{server.url}/xqueue/put_result/", timeout=10, allow_redirects=False,
                                   data={"xqueue_header": item["xqueue_header"],
                                         "xqueue_body": "TATTLE " + GRADER_REPLY})
    assert response.status_code == 500 and response.json()["return_code"] == 1
    assert GRADER_REPLY not in response.text
    # Malformed input with student code in it is logged as a reason, without the input.
    bad = requests.post(f"{server.url}/xqueue/submit/", auth=("course-lms", PASSWORD), timeout=10,
                        data={"xqueue_header": "{" + STUDENT_CODE, "xqueue_body": STUDENT_CODE})
    assert bad.json()["return_code"] == 1

    output = "\n".join(captured_logs.lines)
    for secret in SECRETS:
        assert secret not in output, secret
    assert "TATTLE" not in output
    # The database errors were logged, by class and SQLSTATE (P0001: raise_exception), with their stack frames.
    errors = [json.loads(line) for line in captured_logs.lines if '"unhandled error"' in line]
    assert len(errors) == 2
    for entry in errors:
        assert entry["sqlstate"] == "P0001" and entry["error"] == "RaiseError"
        assert "asyncpg.exceptions.RaiseError (SQLSTATE P0001)" in entry["exc"]
        assert "Traceback (most recent call last)" in entry["exc"]
    assert any("login failed" in line for line in captured_logs.lines)
    assert any("Invalid queue submission from LMS" in line for line in captured_logs.lines)
