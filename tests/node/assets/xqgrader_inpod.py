"""pytest plugin for the grader abuse suite when it runs inside a grader pod (tests/node/test_sandbox_in_pod.py).

The cases, assertions and limits are the local suite's, unchanged (tests/grader is copied into the
pod as it is). What differs in a pod is the harness: it has no root, it is the very uid the daemon,
the zygote and student code run as. So, only when not root:

* the suite's `root` target (the test process as the daemon, in-process pool) is exactly the pod's
  situation; the `same_uid` target, which builds that situation from a root harness (chown, setuid),
  cannot run and is deselected;
* two cases inspect the running daemon's /proc/<pid>/fd from outside; the daemon is non-dumpable,
  so a harness of its own uid is refused that (as student code is) - deselected, see HARNESS_NEEDS_ROOT;
* the course copies are sealed as `xqueue-grader fetch-course` leaves a course in a pod (read-only,
  owned by the pod's uid); locally root owns them;
* the leftover check counts processes of the pod's uid, minus those that existed before the suite
  started (pytest itself among them); locally it counts the per-session sandbox uid.

The host compares outcomes with its own collection: one line (prefix RESULT_MARK) carries every
test's outcome, the end of each failure's traceback, and the deselected ids.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

import pytest

RESULT_MARK = "XQ-INPOD-RESULTS "
# Cases that need a harness more privileged than the daemon (they read its /proc/<pid>/fd).
HARNESS_NEEDS_ROOT = ("test_running_out_of_file_descriptors_is_logged_once",
                      "test_the_daemon_notices_its_own_limits_changing")
ROOT_ONLY_PARAM = "same_uid"

_baseline: set[int] = set()
_outcomes: dict[str, str] = {}
_failures: dict[str, str] = {}
_deselected: list[str] = []
_sealed: list[str] = []


def deselected_ids(ids: Iterable[str]) -> list[str]:
    """The test ids a harness without root cannot run (pure: shared with the host's check)."""
    out = []
    for nodeid in ids:
        name, _, param = nodeid.partition("::")[2].partition("[")
        params = param.rstrip("]").split("-") if param else []
        if ROOT_ONLY_PARAM in params or name in HARNESS_NEEDS_ROOT:
            out.append(nodeid)
    return out


def _pids() -> set[int]:
    return {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}


def pytest_configure(config: pytest.Config) -> None:
    _baseline.update(_pids())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    drop = set(deselected_ids(item.nodeid for item in items))
    if drop:
        config.hook.pytest_deselected(items=[item for item in items if item.nodeid in drop])
        items[:] = [item for item in items if item.nodeid not in drop]
        _deselected.extend(sorted(drop))


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        return
    patched = []
    module: Any  # a test module, patched by attribute
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
    from xqueue_grader.fetch import seal

    conftest = sys.modules["tests.grader.conftest"]
    for root in (conftest.ABUSE_COURSE, conftest.EXAMPLES):
        seal(root)
        _sealed.append(root)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _sealed:
        from xqueue_grader.fetch import unseal

        for root in _sealed:
            unseal(root)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        # A failed or skipped setup/teardown overrides an earlier "passed".
        if _outcomes.get(report.nodeid) in (None, "passed"):
            _outcomes[report.nodeid] = report.outcome
        if report.failed:
            # The last lines of the traceback: enough to say what went wrong, small enough to print.
            _failures[report.nodeid] = "\n".join(str(report.longrepr).splitlines()[-12:])


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(RESULT_MARK + json.dumps(
        {"outcomes": _outcomes, "failures": _failures, "deselected": _deselected}, sort_keys=True))
