"""Unprivileged sandbox for student code: zygote, supervisor, rlimits, Landlock, seccomp."""

from xqueue_grader.sandbox.limits import Limits
from xqueue_grader.sandbox.pool import SandboxPool, SandboxSettings, SandboxUnavailable
from xqueue_grader.sandbox.runs import KillReason, RunResult, RunStatus

__all__ = ["KillReason", "Limits", "RunResult", "RunStatus", "SandboxPool", "SandboxSettings", "SandboxUnavailable"]
