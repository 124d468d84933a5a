"""``make run``'s job end to end: local PostgreSQL, server, grader daemon, fake LMS, three solutions."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def test_the_main_command_grades_a_correct_an_incorrect_and_a_broken_solution() -> None:
    state = tempfile.mkdtemp(prefix="xqueue-demo-")
    os.chmod(state, 0o755)  # PostgreSQL runs as an unprivileged user when the tests run as root
    result = subprocess.run([sys.executable, "-m", "xqueue_server.demo", "--once", "--port", "0"],
                            env={**os.environ, "XQUEUE_LOCAL_STATE_DIR": state}, capture_output=True, text=True,
                            timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "[correct] score=1.0 correct=True" in out
    assert "[incorrect] score=0.0 correct=False" in out
    assert "[broken] score=0 correct=False" in out
    assert "SyntaxError" in out
