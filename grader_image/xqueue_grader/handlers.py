"""Handlers: what the daemon calls for each pulled submission.

By default every submission goes to the gradelib engine (course graders written for
xqueue-watcher).  A course can plug in its own handler instead, configured like xqueue-watcher's
``HANDLERS`` (``{"handler": "package.module.Name", "kwargs": {...}}`` in the YAML file):

* a **legacy** handler is a plain callable ``handler(content: dict) -> dict | None`` (content has
  ``xqueue_header``, ``xqueue_body``, ``xqueue_files``); a class, or any entry with kwargs, is
  instantiated with ``handler(**kwargs)`` first.  It runs in a worker thread.
* a **native** handler is an ``async def handler(submission, context) -> dict | None``, receiving a
  ``protocol.Submission`` and a ``HandlerContext`` whose ``run_python`` runs untrusted code in the
  same sandbox the gradelib engine uses.

A truthy return value is the reply (``{"correct", "score", "msg"}``) put back to XQueue; ``None``
means "no reply" (the server re-offers the submission after its lease).  The daemon calls every
handler through the one ``Handler`` shape, which answers a ``Graded`` (reply and outcome): the
engine knows its outcome, a custom handler's is read back from its reply.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from xqueue_grader.config import GraderConfig, HandlerSpec
from xqueue_grader.engine import GradingEngine
from xqueue_grader.jobs import ScriptJob
from xqueue_grader.protocol import Submission
from xqueue_grader.results import Graded, outcome_of
from xqueue_grader.sandbox import Limits, RunResult, SandboxPool

log = logging.getLogger("xqueue_grader.handlers")

Handler = Callable[[Submission], Awaitable[Graded | None]]

# Handler names from existing xqueue-watcher configurations that mean "the gradelib pipeline".
GRADELIB_ALIASES = frozenset({
    "gradelib",
    "xqueue_grader.engine.GradingEngine",
    "xqueue_watcher.jailedgrader.JailedGrader",
    "xqueue_watcher.containergrader.ContainerGrader",
})


@dataclass
class HandlerContext:
    """What a native handler may use besides the submission."""

    pool: SandboxPool
    limits: Limits
    grader_root: str
    config: GraderConfig | None = None

    async def run_python(self, code: str, files: dict[str, bytes] | None = None,
                         limits: Limits | None = None) -> RunResult:
        """Run ``code`` as ``__main__`` in a fresh sandboxed process; files land in its cwd.

        ``RunResult.stdout``/``stderr`` hold the capped output, ``exit_code`` the status,
        ``kill_reason`` the limit that stopped it (wall, cpu, memory, output, disk, ...).
        """
        job = ScriptJob(code=code, files=dict(files or {}))  # JobError (a ValueError) for bad names
        return await self.pool.run(job, limits or self.limits)


def import_object(path: str, extra_sys_path: str | None = None) -> Any:
    """``package.module.attr`` or ``package.module:attr``."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"handler {path!r} must be 'module.attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        if not extra_sys_path:
            raise
        # Course-supplied handler modules may live in the course repository.
        if extra_sys_path not in sys.path:
            sys.path.append(extra_sys_path)
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _is_async(obj: Any) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    # An instance whose class defines ``async def __call__``.
    return not inspect.isroutine(obj) and inspect.iscoroutinefunction(type(obj).__call__)


def _graded(reply: Any) -> Graded | None:
    """A custom handler's return value: falsy means no reply."""
    if not reply:
        return None
    return Graded(reply, outcome_of(reply))


def wrap(obj: Any, context: HandlerContext) -> Handler:
    if _is_async(obj):
        async def native(submission: Submission) -> Graded | None:
            return _graded(await obj(submission, context))

        return native

    async def legacy(submission: Submission) -> Graded | None:
        return _graded(await asyncio.to_thread(obj, dict(submission.content)))

    return legacy


def build_handlers(specs: tuple[HandlerSpec, ...], engine: GradingEngine, context: HandlerContext) -> list[Handler]:
    """The handler chain; the gradelib engine alone when nothing is configured."""
    if not specs:
        return [engine.grade_submission]
    handlers: list[Handler] = []
    for spec in specs:
        if spec.path in GRADELIB_ALIASES:
            root = spec.kwargs.get("grader_root")
            if root and root != engine.grader_root:
                handlers.append(GradingEngine(engine.pool, str(root), engine.limits,
                                              engine.submission_size_limit // 1024,
                                              engine.metrics).grade_submission)
            else:
                handlers.append(engine.grade_submission)
            continue
        obj = import_object(spec.path, context.grader_root)
        if inspect.isclass(obj) or spec.kwargs:
            obj = obj(**spec.kwargs)
        handlers.append(wrap(obj, context))
        log.info("custom handler loaded", extra={"fields": {"handler": spec.path}})
    return handlers
