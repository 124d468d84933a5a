"""Course-style custom handlers used by the daemon tests (loaded by dotted path, like HANDLERS)."""

from __future__ import annotations

import json
from typing import Any

from xqueue_grader.handlers import HandlerContext
from xqueue_grader.protocol import Submission, parse_body
from xqueue_grader.results import GradeResult, make_reply


class LegacyClass:
    """An xqueue-watcher style class handler, instantiated with KWARGS."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def __call__(self, content: dict[str, Any]) -> dict[str, Any] | None:
        body = json.loads(content["xqueue_body"])
        if "boom" in body["student_response"]:
            raise RuntimeError("handler bug")
        if "skip" in body["student_response"]:
            return None
        ok = body["student_response"].strip() == self.expected
        return {"correct": ok, "score": int(ok), "msg": ""}


async def run_it(submission: Submission, context: HandlerContext) -> dict[str, Any]:
    """A native handler: runs the student's program in the sandbox and checks what it prints."""
    code = parse_body(submission.body).student_response
    run = await context.run_python(code)
    if run.kill_reason:
        return make_reply(GradeResult(errors=[f"stopped: {run.kill_reason}"]))
    ok = run.stdout.strip() == "42"
    return make_reply(GradeResult(correct=ok, score=1.0 if ok else 0.0,
                                  tests=[("prints 42", None, ok, "42\n", run.stdout)]))
