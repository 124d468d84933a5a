"""Pure functions: configuration, protocol parsing, result HTML, polling rhythm (no I/O)."""

from __future__ import annotations

import json

import pytest

from xqueue_grader import results as R
from xqueue_grader.config import ConfigError, HandlerSpec, config_from_sources
from xqueue_grader.course import check_grader_path, flag, is_inside, module_name_for, parse_grader_payload
from xqueue_grader.daemon import FAST_EMPTY_STRIKES, LongPollState, next_poll_delay
from xqueue_grader.jobs import valid_rows
from xqueue_grader.protocol import (
    ProtocolError,
    is_empty_queue,
    parse_body,
    parse_server_reply,
    parse_submission,
    put_result_form,
)
from xqueue_grader.results import outcome_of
from xqueue_grader.sandbox import Limits

# -- configuration -------------------------------------------------------------------------------


def test_config_defaults_follow_the_contract() -> None:
    config = config_from_sources({"XQGRADER_QUEUE": "q1"})
    assert config.server_url == "http://127.0.0.1:18040"
    assert config.grader_root == "/grader/course"
    assert config.slots == 2
    assert config.http_port == 8080
    assert config.drain_seconds == 60
    assert config.username is None and config.password is None
    # anchors.md 6.6 defaults
    assert config.limits == Limits(cpu_seconds=5, wall_seconds=10, memory_mb=256, processes=64,
                                   file_size_kb=1024, output_kb=64, open_files=64)


def test_config_reads_every_contract_variable() -> None:
    env = {
        "XQGRADER_SERVER_URL": "https://xq.example:8443", "XQGRADER_QUEUE": "course-x",
        "XQGRADER_USERNAME": "grader", "XQGRADER_PASSWORD": "s3cret", "XQGRADER_GRADER_ROOT": "/g",
        "XQGRADER_SLOTS": "4", "XQGRADER_HTTP_PORT": "9090", "XQGRADER_DRAIN_SECONDS": "15",
        "XQGRADER_LIMIT_CPU_SECONDS": "2", "XQGRADER_LIMIT_WALL_SECONDS": "4",
        "XQGRADER_LIMIT_MEMORY_MB": "128", "XQGRADER_LIMIT_PROCESSES": "16",
        "XQGRADER_LIMIT_FILE_SIZE_KB": "512", "XQGRADER_LIMIT_OUTPUT_KB": "32",
        "XQGRADER_LIMIT_OPEN_FILES": "40",
    }
    config = config_from_sources(env)
    assert (config.server_url, config.queue, config.username, config.password) == (
        "https://xq.example:8443", "course-x", "grader", "s3cret")
    assert (config.grader_root, config.slots, config.http_port, config.drain_seconds) == ("/g", 4, 9090, 15)
    assert config.limits.cpu_seconds == 2 and config.limits.wall_seconds == 4
    assert config.limits.memory_mb == 128 and config.limits.processes == 16
    assert config.limits.file_size_kb == 512 and config.limits.output_kb == 32 and config.limits.open_files == 40


def test_environment_overrides_file_and_file_overrides_defaults() -> None:
    file_data = {"queue": "from-file", "slots": 3, "limits": {"wall_seconds": 7, "disk_kb": 999},
                 "handlers": [{"HANDLER": "pkg.mod.Handler", "KWARGS": {"a": 1}}, "pkg.other:fn"]}
    config = config_from_sources({"XQGRADER_SLOTS": "5"}, file_data)
    assert config.queue == "from-file"
    assert config.slots == 5
    assert config.limits.wall_seconds == 7 and config.limits.disk_kb == 999
    assert config.handlers == (HandlerSpec("pkg.mod.Handler", {"a": 1}), HandlerSpec("pkg.other:fn"))


def test_password_file_text_is_used_without_trailing_newline() -> None:
    config = config_from_sources({"XQGRADER_QUEUE": "q"}, None, "from-file\n")
    assert config.password == "from-file"


@pytest.mark.parametrize(("env", "fragment"), [
    ({}, "XQGRADER_QUEUE is required"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SLOTS": "many"}, "XQGRADER_SLOTS must be a number"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SLOTS": "0"}, "slots must be at least 1"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SERVER_URL": "ftp://x"}, "server_url"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SERVER_URL": "http://x/"}, "must not end with '/'"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_LIMIT_WALL_SECONDS": "-1"}, "wall_seconds"),
])
def test_bad_configuration_is_reported_by_name(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_sources(env)
    assert fragment in str(info.value)


def test_config_never_shows_the_password() -> None:
    config = config_from_sources({"XQGRADER_QUEUE": "q", "XQGRADER_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(config)
    assert "hunter2" not in json.dumps(config.public_summary())


# -- protocol ------------------------------------------------------------------------------------


def test_envelope_forms() -> None:
    assert parse_server_reply('{"return_code": 0, "content": "Logged in"}').ok
    reply = parse_server_reply('{"return_code": 1, "content": "Queue \'q\' is empty"}')
    assert not reply.ok and is_empty_queue(reply.content)
    legacy = parse_server_reply('{"success": true, "xqueue_header": "h"}')
    assert legacy.ok and legacy.content["xqueue_header"] == "h"
    for bad, message in (("not json", "Could not parse xreply."),
                         ('{"foo": 1}', "Cannot find a valid success or return code."),
                         ('{"success": "yes"}', "Invalid return code.")):
        with pytest.raises(ProtocolError, match=message.replace(".", r"\.")):
            parse_server_reply(bad)


def test_submission_content_is_a_json_string_with_string_header() -> None:
    header = json.dumps({"submission_id": 17, "submission_key": "k" * 32})
    content = json.dumps({"xqueue_header": header, "xqueue_body": "{}", "xqueue_files": "{}"})
    submission = parse_submission(content)
    assert submission.header == header  # echoed back verbatim
    assert submission.submission_id == "17"
    with pytest.raises(ProtocolError):
        parse_submission(json.dumps({"xqueue_body": "{}"}))
    # legacy servers may hand over a dict
    assert parse_submission({"xqueue_header": header, "xqueue_body": "{}"}).files == ""


def test_put_result_form_echoes_header_and_serialises_reply() -> None:
    form = put_result_form('{"submission_id": 1, "submission_key": "x"}', {"correct": True, "score": 1, "msg": "m"})
    assert form["xqueue_header"] == '{"submission_id": 1, "submission_key": "x"}'
    assert json.loads(form["xqueue_body"]) == {"correct": True, "score": 1, "msg": "m"}


def test_body_and_payload_parsing() -> None:
    body = parse_body(json.dumps({"grader_payload": ' {"grader": "a/b.py", "hide_output": "true"} ',
                                  "student_response": "x = 1", "student_info": "{}"}))
    config = parse_grader_payload(body.grader_payload)
    assert config["grader"] == "a/b.py" and flag(config, "hide_output") and not flag(config, "skip_grader")
    with pytest.raises(ProtocolError):
        parse_body(json.dumps({"grader_payload": "{}"}))
    with pytest.raises(ProtocolError):
        parse_grader_payload("not json")


@pytest.mark.parametrize("path", ["../x/grade.py", "a/../../grade.py", "/etc/grade.py", "a\x00.py", "",
                                  "a\\..\\b.py", "a/answer.txt", "."])
def test_grader_path_traversal_is_rejected(path: str) -> None:
    with pytest.raises(ProtocolError):
        check_grader_path(path)


def test_grader_path_normalisation_and_containment() -> None:
    assert check_grader_path("./square//grade_square.py") == "square/grade_square.py"
    assert is_inside("/g/course/a.py", "/g/course")
    assert not is_inside("/g/course2/a.py", "/g/course")
    assert module_name_for("x/grade-hello.py") == "grade_hello"
    assert module_name_for("x/1st.py") == "_1st"
    assert module_name_for("x/submission.py") == "grader_submission"


# -- result HTML (what students see) -------------------------------------------------------------

EXPECTED_HTML = """
<div class="test">
<header>Test results</header>
  <section>
    <div class="shortform">
    INCORRECT
    </div>
    <div class="longform">
~~~~~~
~~~~~~
  <div class="result-output result-correct">
    <h4>Test: f(1)</h4>
    <pre><p>calls &lt;f&gt;</p></pre>
    <dl>
    <dt>Output:</dt>
    <dd class="result-actual-output">
       <pre>1
</pre>
       </dd>
    </dl>
  </div>

  <div class="result-output result-incorrect">
    <h4>Test: f(2)</h4>
    <pre></pre>
    <dl>
    <dt>Your output:</dt>
    <dd class="result-actual-output"><pre>&quot;3&quot; &amp; more
</pre></dd>
    <dt>Correct output:</dt>
    <dd><pre>4
</pre></dd>
    </dl>
  </div>

    </div>
  </section>
</div>
""".replace("~", " ")  # blank lines with trailing spaces, as the original template renders them


def test_rendered_html_matches_xqueue_watcher_layout() -> None:
    result = R.GradeResult(correct=False, score=0.5, tests=[
        ("Test: f(1)", "calls <f>", True, "1\n", "1\n"),
        ("Test: f(2)", None, False, "4\n", '"3" & more\n'),
    ])
    assert R.render_results(result) == EXPECTED_HTML
    reply = R.make_reply(result)
    assert set(reply) == {"correct", "score", "msg"}


def test_errors_render_as_error_status_with_escaped_items() -> None:
    html = R.render_results(R.error_result("<b>boom</b>", "second"))
    assert "    ERROR\n" in html
    assert ('<div class="result-errors"><ul>\n<li><pre>&lt;b&gt;boom&lt;/b&gt;</pre></li>\n\n'
            '<li><pre>second</pre></li>\n</ul>\n</div>') in html


def test_correct_status_and_skipped_grader() -> None:
    assert "    CORRECT\n" in R.render_results(R.skipped_result())
    assert R.make_reply(R.skipped_result())["score"] == 1


def test_comparison_rules() -> None:
    _ = R.identity
    expected = [("t1", None, "1\n"), ("t2", "long", "2\n")]
    assert R.pair_rows(expected, [("t1", None, "1\n")], _).error == R.DIFFERENT_COUNTS
    assert R.pair_rows(expected, [("t1", None, "1\n"), ("tX", None, "2\n")], _).error == R.TESTS_MISMATCH
    pairing = R.pair_rows(expected, [("t1", None, "1\n"), ("t2", None, "x" * 6000)], _)
    assert pairing.rows[1][3] == "x" * 5000 + "...OUTPUT TRUNCATED"
    result = R.finalize(pairing.rows, R.default_verdicts(pairing.rows), False, _)
    assert (result.correct, result.score) == (False, 0.5)
    hidden = R.finalize(pairing.rows, [(True, ""), (True, "")], True, _)
    assert (hidden.correct, hidden.score, hidden.tests) == (True, 1.0, [])
    empty = R.finalize([], [], False, _)
    assert empty.errors == [R.NO_TESTS] and empty.score == 0


def test_compare_suffix_is_appended_to_shown_output() -> None:
    rows = [("t", None, "1\n", "2\n")]
    result = R.finalize(rows, [(False, "\n*** ERROR: not a number ***")], False, R.identity)
    assert result.tests[0][4] == "2\n\n*** ERROR: not a number ***"


def test_forged_rows_are_rejected() -> None:
    assert valid_rows([["t", None, "out"]]) == [("t", None, "out")]
    for forged in ("x", [["t", None]], [[1, None, "o"]], [["t", 5, "o"]], None):
        assert valid_rows(forged) is None


def test_kill_messages_name_the_limit() -> None:
    limits = Limits(wall_seconds=3, cpu_seconds=2.5).to_dict()
    assert "3 seconds" in R.kill_message("wall", limits, None, R.identity)
    assert "2.5 seconds" in R.kill_message("cpu", limits, None, R.identity)
    assert "256 MiB" in R.kill_message("memory", limits, None, R.identity)
    assert "signal 11" in R.kill_message("signal", limits, 11, R.identity)
    hints = R.limit_hints("BlockingIOError: [Errno 11] Resource temporarily unavailable", limits, R.identity)
    assert hints == ["Your code tried to start too many processes or threads (limit: 64)."]


# -- polling rhythm ------------------------------------------------------------------------------


def test_poll_delay_doubles_within_bounds() -> None:
    assert next_poll_delay(0.5, 0.5, 4) == 1.0
    assert next_poll_delay(3, 0.5, 4) == 4
    assert next_poll_delay(0.01, 0.5, 4) == 0.5


def test_long_poll_falls_back_after_fast_empty_replies_and_reprobes() -> None:
    state = LongPollState(20)
    assert state.wait(0) == 20
    for _ in range(FAST_EMPTY_STRIKES - 1):
        assert state.record_empty(20, 0.01, 0) is False
        assert state.wait(0) == 20
    state.record_empty(20, 0.01, 0)
    assert state.wait(1) is None  # fell back to classic polling
    assert state.wait(10_000) == 20  # and probes again later


def test_long_poll_that_waited_means_poll_again_at_once() -> None:
    state = LongPollState(2)
    assert state.record_empty(2, 2.0, 0) is True
    assert state.confirmed
    assert LongPollState(0).wait(0) is None


def test_outcome_labels() -> None:
    assert outcome_of({"correct": True, "score": 1, "msg": ""}) == "correct"
    assert outcome_of(R.make_reply(R.error_result("x"))) == "error"
    assert outcome_of({"correct": False, "score": 0, "msg": "<div></div>"}) == "incorrect"
