"""pytest plugin for the grader abuse suite when it runs inside a grader pod (tests/node/test_sandbox_in_pod.py).

The cases, assertions and limits are the local suite's, unchanged (tests/grader/test_abuse*.py is
copied into the pod as it is). Two things differ in a pod and are adapted here, nothing else:

* Locally the suite runs as root and the sandbox drops student code to a per-session uid, which the
  suite's leftover check counts. In a restricted pod nothing can change uid: student code runs under
  the pod's own uid, shared with pytest and the pod's idle process. So the check counts that uid,
  minus the processes that existed before the suite started (pytest itself among them); every
  process the runs leave behind is still found.
* The host compares outcomes with its own collection, so one line with every test's outcome is
  printed at the end (prefix RESULT_MARK).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

RESULT_MARK = "XQ-INPOD-RESULTS "
_baseline: set[int] = set()
_outcomes: dict[str, str] = {}


def _pids() -> set[int]:
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}


def pytest_configure(config: pytest.Config) -> None:
    _baseline.update(_pids())


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        return  # as root the suite's own uid handling applies
    patched = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("tests.grader.") or not hasattr(module, "sandbox_processes"):
            continue
        original: Callable[[set[int]], list[int]] = module.sandbox_processes
        module.SESSION_UID = os.geteuid()

        def sandbox_processes(exclude: set[int], _original: Any = original) -> list[int]:
            return list(_original(set(exclude) | _baseline))

        module.sandbox_processes = sandbox_processes
        patched.append(name)
    if not patched:
        # The suite changed shape: better to stop than to run a leftover check that sees nothing.
        pytest.exit("xqgrader_inpod: no tests.grader module with sandbox_processes() to adapt", returncode=3)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        # A failed or skipped setup/teardown overrides an earlier "passed".
        if _outcomes.get(report.nodeid) in (None, "passed"):
            _outcomes[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(RESULT_MARK + json.dumps(_outcomes, sort_keys=True))
