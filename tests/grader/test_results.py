"""What students see: the result HTML, the comparison rules, limit messages, outcomes (pure)."""

from __future__ import annotations

from xqueue_grader import results as R
from xqueue_grader.results import outcome_of
from xqueue_grader.sandbox import Limits
from xqueue_grader.sandbox.runs import KillReason

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
    rows: list[tuple[str, str | None, str, str]] = [("t", None, "1\n", "2\n")]
    result = R.finalize(rows, [(False, "\n*** ERROR: not a number ***")], False, R.identity)
    assert result.tests[0][4] == "2\n\n*** ERROR: not a number ***"


def test_kill_messages_name_the_limit() -> None:
    limits = Limits(wall_seconds=3, cpu_seconds=2.5).to_dict()
    assert "3 seconds" in R.kill_message(KillReason.WALL, limits, None, R.identity)
    assert "2.5 seconds" in R.kill_message(KillReason.CPU, limits, None, R.identity)
    assert "256 MiB" in R.kill_message(KillReason.MEMORY, limits, None, R.identity)
    assert "signal 11" in R.kill_message(KillReason.SIGNAL, limits, 11, R.identity)
    hints = R.limit_hints("BlockingIOError: [Errno 11] Resource temporarily unavailable", limits, R.identity)
    assert hints == ["Your code tried to start too many processes or threads (limit: 64)."]


def test_outcome_labels() -> None:
    assert outcome_of({"correct": True, "score": 1, "msg": ""}) == "correct"
    assert outcome_of(R.make_reply(R.error_result("x"))) == "error"
    assert outcome_of({"correct": False, "score": 0, "msg": "<div></div>"}) == "incorrect"
