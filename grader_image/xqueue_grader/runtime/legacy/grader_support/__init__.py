"""``from grader_support import gradelib``: the historical package name of the grader support code."""

from xqueue_grader.runtime import gradelib

__all__ = ["gradelib"]
