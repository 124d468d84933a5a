"""Pure parts of auth.py: password hashes and per-queue permissions."""

from __future__ import annotations

from xqueue_server.auth import can_pull, can_submit, hash_password, verify_password, visible_queues
from xqueue_server.db import Account


def test_password_hashes_are_salted_and_verify() -> None:
    first, second = hash_password("pw-123456", n=2**10), hash_password("pw-123456", n=2**10)
    assert first != second
    assert verify_password("pw-123456", first)
    assert not verify_password("pw-1234567", first)
    assert not verify_password("pw-123456", "md5$garbage")


def test_permissions_default_to_upstream_and_narrow_when_listed() -> None:
    anyone = Account(1, "lms", False, None, None)
    grader = Account(2, "g", False, ("course-a",), ())
    assert can_pull(anyone, "x") and can_submit(anyone, "x")
    assert can_pull(grader, "course-a") and not can_pull(grader, "course-b")
    assert not can_submit(grader, "course-a")
    assert visible_queues(grader, ["course-a", "course-b"]) == ["course-a"]
    assert visible_queues(anyone, ["course-a", "course-b"]) == ["course-a", "course-b"]
