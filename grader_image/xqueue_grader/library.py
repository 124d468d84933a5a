"""A small library for writing external graders: what a custom handler needs, in one import.

    from xqueue_grader.library import GradeResult, HandlerContext, Submission, make_reply, parse_body

    async def handle(submission: Submission, context: HandlerContext) -> dict | None:
        code = parse_body(submission.body).student_response
        run = await context.run_python(code)            # sandboxed, limits from the daemon's config
        ok = run.kill_reason is None and run.stdout.strip() == "42"
        return make_reply(GradeResult(correct=ok, score=1.0 if ok else 0.0,
                                      tests=[("prints 42", None, ok, "42\\n", run.stdout)]))

Configured in the daemon's YAML file as ``handlers: ["mycourse.grading:handle"]`` (module on the
Python path or in the grader root).  Plain xqueue-watcher handlers (``handler(content) -> dict``)
work too; see ``xqueue_grader.handlers``.
"""

from xqueue_grader.course import flag, parse_grader_payload
from xqueue_grader.handlers import HandlerContext
from xqueue_grader.protocol import Body, Submission, parse_body
from xqueue_grader.results import GradeResult, error_result, make_reply, render_results
from xqueue_grader.sandbox import Limits, RunResult

__all__ = [
    "Body",
    "GradeResult",
    "HandlerContext",
    "Limits",
    "RunResult",
    "Submission",
    "error_result",
    "flag",
    "make_reply",
    "parse_body",
    "parse_grader_payload",
    "render_results",
]
