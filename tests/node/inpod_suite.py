"""The grader abuse suite, packed to run unchanged inside a grader pod (tests/node/test_sandbox_in_pod.py).

The archive holds the local suite's own files (tests/grader: test_abuse*.py, conftest.py and the
abuse course; tests/waiting.py; examples/course; pyproject.toml for the same pytest settings), pytest with the plugins
the settings name, and the small in-pod adapter plugin (assets/xqgrader_inpod.py). The grader
package itself is NOT shipped: the suite runs against the xqueue_grader installed in the image.
"""

from __future__ import annotations

import base64
import importlib.metadata as metadata
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PLUGIN = Path(__file__).resolve().parent / "assets" / "xqgrader_inpod.py"
SUITE_DIR = "/tmp/suite"  # inside the pod: /tmp is the grader pod's writable emptyDir
# pytest and the plugins pyproject.toml's settings use (asyncio_mode, timeout).
DISTRIBUTIONS = ("pytest", "pytest-asyncio", "pytest-timeout")
RESULT_MARK = "XQ-INPOD-RESULTS "  # the plugin's closing line (assets/xqgrader_inpod.py)


def suite_files() -> list[Path]:
    """The abuse test modules, relative to the repository (every tests/grader/test_abuse*.py)."""
    found = sorted(p.relative_to(REPO) for p in (REPO / "tests" / "grader").glob("test_abuse*.py"))
    if not found:
        raise FileNotFoundError("no tests/grader/test_abuse*.py")
    return found


def _closure(names: tuple[str, ...]) -> list[metadata.Distribution]:
    """The distributions and everything they require on this interpreter (markers evaluated)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _skip(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc"


def build_archive() -> bytes:
    """A gzip'd tar to unpack in SUITE_DIR: the suite under its repository paths, libraries under site/."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(source: Path, name: str) -> None:
            info = tar.gettarinfo(str(source), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if info.isdir() or source.stat().st_mode & 0o111 else 0o644
            if info.isfile():
                with source.open("rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)

        add(REPO / "pyproject.toml", "pyproject.toml")
        add(REPO / "tests" / "__init__.py", "tests/__init__.py")
        add(REPO / "tests" / "waiting.py", "tests/waiting.py")  # the one waiting helper tests/grader uses
        for folder in (REPO / "tests" / "grader", REPO / "examples" / "course"):
            for path in sorted(folder.rglob("*")):
                if path.is_file() and not _skip(path):
                    add(path, str(path.relative_to(REPO)))
        add(PLUGIN, "site/xqgrader_inpod.py")
        for dist in _closure(DISTRIBUTIONS):
            for rel in dist.files or []:
                path = Path(str(dist.locate_file(rel)))
                # Console scripts live outside site-packages ("../../bin/pytest"): not needed.
                if str(rel).startswith("..") or _skip(Path(str(rel))) or not path.is_file():
                    continue
                add(path, f"site/{rel}")
    return buf.getvalue()


def archive_text() -> str:
    """The archive as base64 text (kubectl exec's stdin is text here)."""
    return base64.b64encode(build_archive()).decode("ascii")


def pytest_command(files: list[Path], timeout: int) -> str:
    """The shell command run in the pod: unpack the base64 archive on stdin into SUITE_DIR, then run
    pytest on the suite with the adapter plugin."""
    targets = " ".join(str(f) for f in files)
    return (
        f"rm -rf {SUITE_DIR} && mkdir -p {SUITE_DIR} && cd {SUITE_DIR} && base64 -d | tar xzf - && "
        f"PYTHONPATH={SUITE_DIR}/site exec python -m pytest -p xqgrader_inpod -p no:cacheprovider "
        f"-o timeout={timeout} -q -rfEs {targets}"
    )


def local_collection(files: list[Path]) -> list[str]:
    """Test ids the local run of the same files collects (what the pod must pass, one for one)."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *map(str, files)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    ids = [line for line in out.stdout.splitlines() if "::" in line]
    if out.returncode != 0 or not ids:
        raise RuntimeError(f"local collection failed ({out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


@dataclass(frozen=True)
class PodResults:
    outcomes: dict[str, str]  # test id -> passed / failed / skipped
    failures: dict[str, str]  # test id -> the end of its traceback
    deselected: list[str]     # ids the plugin did not run (a harness without root cannot)


def parse_results(output: str) -> PodResults | None:
    """What the plugin's closing line reports, or None if the line is missing."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_MARK):
            data = json.loads(line[len(RESULT_MARK):])
            return PodResults({str(k): str(v) for k, v in data["outcomes"].items()},
                              {str(k): str(v) for k, v in data["failures"].items()},
                              [str(x) for x in data["deselected"]])
    return None


def plugin_module() -> ModuleType:
    """The in-pod plugin, loaded here too: the host checks its deselection with the same rule."""
    spec = importlib.util.spec_from_file_location("xqgrader_inpod", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
