"""Pure functions of the server: request parsing, backoff, configuration, hashing, URL signatures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from xqueue_server import protocol as p
from xqueue_server.auth import can_pull, can_submit, hash_password, verify_password, visible_queues
from xqueue_server.config import ConfigError, Settings, load_settings
from xqueue_server.db import QUERIES, Account, load_queries, migration_files
from xqueue_server.delivery import backoff_delay, next_step
from xqueue_server.storage import check_signature, sign

HEADER = json.dumps({"lms_callback_url": "https://lms.example/cb", "lms_key": "k", "queue_name": "q"})


def test_parse_submit_accepts_the_lms_header_and_keeps_it_verbatim() -> None:
    parsed = p.parse_lms_submission(HEADER, "body", 10_000, 10_000)
    assert parsed == p.LmsSubmission("q", "https://lms.example/cb", HEADER, "body")


@pytest.mark.parametrize("header", ["", "{", "[]", "1", json.dumps({"lms_key": "k", "queue_name": "q"}),
                                    json.dumps({"lms_callback_url": "/rel", "lms_key": "k", "queue_name": "q"}),
                                    json.dumps({"lms_callback_url": "ftp://x/y", "lms_key": "k", "queue_name": "q"})])
def test_parse_submit_rejects_bad_headers(header: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_lms_submission(header, "", 10_000, 10_000)
    assert err.value.message.startswith("Queue request has invalid format")


def test_parse_submit_coerces_queue_name_like_upstream() -> None:
    header = json.dumps({"lms_callback_url": "http://lms/cb", "lms_key": "k", "queue_name": 42})
    assert p.parse_lms_submission(header, "", 10_000, 10_000).queue_name == "42"


def test_parse_submit_enforces_size_limits() -> None:
    with pytest.raises(p.ProtocolError, match="larger than 10 bytes"):
        p.parse_lms_submission(HEADER, "x" * 11, 10_000, 10)


@pytest.mark.parametrize(("header", "message"), [
    ("{", "Incorrect reply format"),
    (json.dumps({"submission_id": 1}), "Incorrect reply format"),
    (json.dumps({"submission_id": "x", "submission_key": "k"}),
     "Incorrect reply format: submission_id must be an integer"),
    (json.dumps({"submission_id": 0, "submission_key": "k"}), "Submission does not exist"),
    (json.dumps({"submission_id": 1, "submission_key": 5}), "Incorrect key for submission"),
])
def test_parse_reply_errors(header: str, message: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_grader_reply(header, "{}")
    assert err.value.message == message


def test_parse_reply_accepts_numeric_strings_like_upstream() -> None:
    parsed = p.parse_grader_reply(json.dumps({"submission_id": "17", "submission_key": "abc"}), "{}")
    assert (parsed.submission_id, parsed.submission_key) == (17, "abc")


def test_submission_content_nests_json_strings() -> None:
    content = p.submission_content(3, "key", "body", {"a.py": "http://x/a"})
    assert json.loads(content["xqueue_header"]) == {"submission_id": 3, "submission_key": "key"}
    assert json.loads(content["xqueue_files"]) == {"a.py": "http://x/a"}


def test_failure_notice_is_upstreams_exact_body() -> None:
    assert json.loads(p.FAILURE_NOTICE_BODY) == {
        "correct": None, "score": 0,
        "msg": '<div class="capa_alert">Your submission could not be graded. Please recheck your submission and '
               "try again. If the problem persists, please notify the course staff.</div>"}


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 1.0, 60.0, rng) for n in range(1, 10)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] <= 60.0


def test_next_step_dead_letters_after_the_horizon() -> None:
    settings = Settings(callback_horizon_seconds=100, callback_backoff_base_seconds=1, callback_backoff_max_seconds=50)
    assert next_step(100.0, 5, settings) is None
    assert next_step(99.5, 20, settings) == pytest.approx(0.5)  # the last try lands on the horizon
    step = next_step(0.0, 1, settings)
    assert step is not None and 0.5 <= step <= 1.0


def test_settings_from_env_and_yaml(tmp_path: Path) -> None:
    config = tmp_path / "xqueue.yaml"
    config.write_text("lease_seconds: 30\nqueues: [a, b]\ncallback_verify_tls: false\n")
    settings = load_settings(env={"XQUEUE_CONFIG_FILE": str(config), "XQUEUE_MAX_PULLS": "7",
                                  "XQUEUE_LEASE_SECONDS": "45"})
    assert settings.lease_seconds == 45.0  # environment beats the file
    assert settings.max_pulls == 7
    assert settings.queues == ("a", "b")
    assert settings.callback_verify_tls is False


@pytest.mark.parametrize(("env", "message"), [
    ({"XQUEUE_MAX_PULLS": "many"}, "invalid value for XQUEUE_MAX_PULLS"),
    ({"XQUEUE_STORAGE": "ftp"}, "XQUEUE_STORAGE must be"),
    ({"XQUEUE_STORAGE": "s3"}, "XQUEUE_S3_BUCKET is required"),
    ({"XQUEUE_CALLBACK_VERIFY_TLS": "maybe"}, "not a boolean"),
])
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_yaml_setting_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("leese_seconds: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'leese_seconds'"):
        load_settings(env={"XQUEUE_CONFIG_FILE": str(config)})


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


def test_file_url_signatures() -> None:
    key = "0" * 32
    signature = sign("k", key, 2000)
    assert check_signature("k", key, "2000", signature, now=1000)
    assert not check_signature("k", key, "2000", signature, now=2001)  # expired
    assert not check_signature("other", key, "2000", signature, now=1000)
    assert not check_signature("k", "../etc/passwd", "2000", signature, now=1000)
    assert not check_signature("k", key, "soon", signature, now=1000)


def test_every_query_is_named_and_migrations_are_ordered() -> None:
    assert load_queries("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;") == {"a": "SELECT 1;", "b": "SELECT 2;"}
    assert {"claim_submissions", "record_result", "insert_submission", "claim_due_callbacks"} <= set(QUERIES)
    versions = [v for v, _, _ in migration_files()]
    assert versions == sorted(versions) and versions[0] == 1
