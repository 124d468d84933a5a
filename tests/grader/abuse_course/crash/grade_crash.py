"""A broken course grader: fails while being imported."""

import gradelib

grader = gradelib.Grader()
raise RuntimeError("this grader is broken")
