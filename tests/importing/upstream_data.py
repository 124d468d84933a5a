"""Rows shaped like a live upstream XQueue database, for the import tests: Django accounts with
PBKDF2 hashes made from known passwords (and some that cannot be imported), and submissions in every
state upstream leaves them in. ``EXPECTED`` says what the import must do with each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from xqueue_server.passwords import make_django_password

LMS_USER, LMS_PASSWORD = "edx-lms", "lms-old-password-1"
GRADER_USER, GRADER_PASSWORD = "watcher", "watcher-old-password"
OPS_USER, OPS_PASSWORD = "ops", "ops-old-password"
ITERATIONS = 100_000  # real Django uses more; verification cost is not what is tested here
REPLY = {"correct": True, "score": 1, "msg": "<p>graded upstream</p>"}

Row = dict[str, Any]


def _user(uid: int, username: str, password: str, *, superuser: bool = False, active: bool = True) -> Row:
    joined = datetime(2020, 1, 1)
    return {"id": uid, "password": password, "last_login": None, "is_superuser": superuser, "username": username,
            "first_name": "", "last_name": "", "email": f"{username}@example.org", "is_staff": superuser,
            "is_active": active, "date_joined": joined}


def users() -> list[Row]:
    return [
        _user(1, LMS_USER, make_django_password(LMS_PASSWORD, "lmssalt123", ITERATIONS)),
        _user(2, GRADER_USER, make_django_password(GRADER_PASSWORD, "gradersalt", ITERATIONS, "pbkdf2_sha1")),
        _user(3, OPS_USER, make_django_password(OPS_PASSWORD, "opssalt456", ITERATIONS), superuser=True),
        _user(4, "legacy-bcrypt", "bcrypt_sha256$$2b$12$0123456789012345678901uQ2h6Zq5Yz8dM6b9dUuL5Wq3m6pQyKe"),
        _user(5, "no-password", "!kG7Tq2mYbZ8w1Xc4Vd5Nf6Hj9Lp0Rs3UuIiOoPp"),
        _user(6, "old-grader", make_django_password("whatever-pass", "oldsalt999", ITERATIONS), active=False),
    ]


GROUPS = [{"id": 1, "name": "graders"}]
USER_GROUPS = [{"id": 1, "user_id": 2, "group_id": 1}]


def submissions(callback_url: Callable[[str], str], now: datetime | None = None) -> list[Row]:
    """Upstream rows; callback_url(name) is where the (fake) LMS waits for that submission's grade."""
    now = (now or datetime.now(UTC)).replace(tzinfo=None)  # Django on MySQL: naive UTC

    def row(sid: int, name: str, queue: str, minutes_ago: float, **changes: Any) -> Row:
        url = callback_url(name)
        header = json.dumps({"lms_callback_url": url, "lms_key": f"lms-key-{name}", "queue_name": queue})
        base: Row = {
            "id": sid, "requester_id": "lms.example.org", "lms_callback_url": url, "queue_name": queue,
            "xqueue_header": header,
            # Not only ASCII (utf8mb4 on MySQL): answers and names come in every language.
            "xqueue_body": json.dumps({"student_info": json.dumps({"anonymous_student_id": f"s{sid}"}),
                                       "student_response": f"print({sid})  # réponse ✓ 答え",
                                       "grader_payload": "{}"}, ensure_ascii=False),
            "s3_keys": "{}", "s3_urls": "{}", "arrival_time": now - timedelta(minutes=minutes_ago),
            "pull_time": None, "push_time": None, "return_time": None, "grader_id": "", "pullkey": "",
            "grader_reply": "", "num_failures": 0, "lms_ack": False, "retired": False,
        }
        base.update(changes)
        return base

    stale = row(6, "waiting", "python-3", 120)
    stale["xqueue_header"] = stale["xqueue_header"].replace("lms-key-waiting", "lms-key-stale")
    return [
        row(1, "pulled", "python-3", 55, pull_time=now - timedelta(minutes=40), pullkey="0a1b2c", grader_id="10.0.0.5"),
        row(2, "waiting", "python-3", 50),
        row(3, "graded", "python-3", 70, pull_time=now - timedelta(minutes=69), return_time=now - timedelta(minutes=68),
            grader_reply=json.dumps(REPLY), num_failures=3),
        row(4, "finished", "python-3", 300, return_time=now - timedelta(minutes=290), grader_reply=json.dumps(REPLY),
            lms_ack=True, retired=True),
        row(5, "with-files", "python-3", 30, s3_keys=json.dumps({"answer.py": "abc"}),
            s3_urls=json.dumps({"answer.py": "/media/python-3/abc"})),  # upstream's local storage: MEDIA_URL
        stale,
        row(7, "broken", "python-3", 20, xqueue_header="not json at all"),
        row(8, "matlab", "matlab", 10),
    ]


# name in the rows above -> what the import does with it.
EXPECTED = {
    "pulled": "pending",     # with a grader that never answered: graded again here
    "waiting": "pending",
    "graded": "answered",    # graded, LMS never acknowledged: the callback goes out from our outbox
    "matlab": "pending",
}
SKIPPED_SUBMISSIONS = {5: "uploaded file", 6: "superseded", 7: "not a valid LMS submission"}
IMPORTED_ACCOUNTS = {LMS_USER, GRADER_USER, OPS_USER, "old-grader"}
SKIPPED_ACCOUNTS = {"legacy-bcrypt": "bcrypt_sha256", "no-password": "no usable password"}


def insert_all(cursor: Any, placeholder: str, tables: dict[str, list[Row]]) -> None:
    """Insert with any DB-API cursor (placeholder: '%s' for PyMySQL, '?' for sqlite3)."""
    for table, rows in tables.items():
        for row in rows:
            columns = ", ".join(row)
            marks = ", ".join([placeholder] * len(row))
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))


def all_tables(callback_url: Callable[[str], str]) -> dict[str, list[Row]]:
    return {"auth_user": users(), "auth_group": GROUPS, "auth_user_groups": USER_GROUPS,
            "queue_submission": submissions(callback_url)}
