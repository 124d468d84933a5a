"""Unprivileged sandbox for student code: zygote, supervisor, rlimits, Landlock, seccomp."""

from xqueue_grader.sandbox.limits import Limits
from xqueue_grader.sandbox.pool import RunResult, SandboxPool, SandboxSettings, SandboxUnavailable

__all__ = ["Limits", "RunResult", "SandboxPool", "SandboxSettings", "SandboxUnavailable"]
