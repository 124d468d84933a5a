"""The test harness that runs inside a sandboxed child process.

One job, one process, one mode:

* ``staff``   - imports the course grader, runs its input checks and preprocessors on the student's
  text (never executing it), then imports the preprocessed staff answer into a *fresh* grader and
  records every test's output: the expected values.
* ``student`` - imports a fresh grader and the preprocessed submission, records every test's output.
  It receives neither ``answer.py`` nor any expected value, so nothing it can read or forge changes
  the comparison: a forged channel only changes the student's own "actual" outputs.
* ``compare`` - only for tests with a custom ``compare_results``: runs the grader's comparison
  functions on (expected, actual) strings.  It never runs student code.
* ``script``  - runs arbitrary code as ``__main__`` (for custom handlers and the benchmark).

The result is one JSON document written to the channel fd (never to stdout, which student code
owns).  The output shape of ``staff``/``student`` follows the xqueue-watcher run format:
``{"grader": {...}, "submission": {...}, "results": [[short, long, output], ...], "exceptions": n}``.
"""

from __future__ import annotations

import base64
import builtins
import gettext
import io
import json
import linecache
import os
import random
import sys
import traceback
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from xqueue_grader.runtime import gradelib

SUBMISSION_MODULE = "submission"
INTERFERED = "Your code interfered with our grader.  Don't use bare 'except' clauses."


class BoundedText(io.TextIOBase):
    """A stdout replacement that keeps at most ``limit`` characters.

    Student code printing gigabytes must not exhaust the child's memory before the comparison
    ever happens; what is beyond the cap is counted and dropped.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._kept = 0
        self._limit = max(0, limit)
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self._limit - self._kept
        if room > 0:
            piece = s[:room]
            self._parts.append(piece)
            self._kept += len(piece)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def getvalue(self) -> str:
        return "".join(self._parts)


@contextmanager
def captured_stdout(limit: int) -> Iterator[BoundedText]:
    saved = sys.stdout
    buffer = BoundedText(limit)
    sys.stdout = buffer
    try:
        yield buffer
    finally:
        sys.stdout = saved


def install_translations(mo_b64: str | None) -> None:
    """Install ``_`` as a builtin, as graders and gradelib messages expect."""
    translations: gettext.NullTranslations
    if mo_b64:
        try:
            translations = gettext.GNUTranslations(io.BytesIO(base64.b64decode(mo_b64)))
        except Exception:
            translations = gettext.NullTranslations()
    else:
        translations = gettext.NullTranslations()
    translations.install()


def seed_randomness(seed: int) -> None:
    # The grader's private generator and the global one (exercises may use ``random``) get the
    # same seeds in the staff run and the student run.
    gradelib.rand = random.Random(seed)
    random.seed(seed + 1)


def load_module(name: str, source: str, filename: str) -> types.ModuleType:
    """Import ``source`` as module ``name`` from memory (nothing is written to disk)."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    code = compile(source, filename, "exec", dont_inherit=True)
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _frame_in_file(frame: types.FrameType, filename: str) -> bool:
    stem = os.path.splitext(os.path.basename(frame.f_code.co_filename))[0]
    return stem == os.path.splitext(filename)[0]


def format_exception(main_file: str | None = None) -> str:
    """The current exception; for student code, starting at the first frame of ``main_file``.

    Hiding the harness frames keeps the traceback about the student's code only.
    """
    exc_type, exc_value, tb = sys.exc_info()
    if main_file:
        start = tb
        while start is not None and not _frame_in_file(start.tb_frame, main_file):
            start = start.tb_next
        tb = start
    return "".join(traceback.format_exception(exc_type, exc_value, tb))


def import_captured(
    name: str, source: str, filename: str, output_limit: int, our_code: bool
) -> tuple[types.ModuleType | None, dict[str, Any]]:
    result: dict[str, Any] = {"status": "notrun"}
    module = None
    with captured_stdout(output_limit) as out:
        try:
            module = load_module(name, source, filename)
        except BaseException:
            result["status"] = "error"
            result["exception"] = format_exception(None if our_code else filename)
        else:
            result["status"] = "ok"
    result["stdout"] = out.getvalue()
    return module, result


def _guard_pid(harness_pid: int) -> None:
    # A process forked by student code continues in the harness when its student function
    # returns; only the original process may report, so copies leave quietly.
    if os.getpid() != harness_pid:
        os._exit(0)


def run_tests(job: dict[str, Any], code: str, harness_pid: int) -> dict[str, Any]:
    """Import a fresh grader and ``code`` as the submission module; run every test."""
    limit = int(job.get("output_limit", 65536))
    grader_name = job["grader_name"]
    grader_file = grader_name + ".py"
    sub_file = SUBMISSION_MODULE + ".py"
    output: dict[str, Any] = {
        "grader": {"status": "notrun"},
        "submission": {"status": "notrun"},
        "results": [],
        "exceptions": 0,
    }
    seed_randomness(int(job["seed"]))
    grader_mod, res = import_captured(grader_name, job["grader_source"], grader_file, limit, True)
    grader = None
    if grader_mod is not None:
        try:
            grader = grader_mod.grader
        except BaseException:
            res["status"] = "error"
            res["exception"] = format_exception()
            output["exceptions"] += 1
    else:
        output["exceptions"] += 1
    output["grader"].update(res)
    if output["grader"]["status"] != "ok" or grader is None:
        return output

    submission, res = import_captured(SUBMISSION_MODULE, code, sub_file, limit, False)
    _guard_pid(harness_pid)
    output["submission"].update(res)
    if submission is not None and res["status"] == "ok":
        try:
            for test in grader.tests():
                exception_output = ""
                with captured_stdout(limit) as test_stdout:
                    try:
                        test(submission)
                    except gradelib.EndTest:
                        grader.caught_end_test()
                    except BaseException:
                        # Could be the grader or the student: show only the student's frames.
                        exception_output = format_exception(sub_file)
                        output["exceptions"] += 1
                _guard_pid(harness_pid)
                test_output = test_stdout.getvalue()
                if test_output and not test_output.endswith("\n"):
                    test_output += "\n"
                test_output += exception_output
                output["results"].append(
                    [_text(test.short_description), _opt_text(test.detailed_description), test_output]
                )
        except BaseException:
            _guard_pid(harness_pid)
            output["grader"]["status"] = "error"
            output["grader"]["exception"] = format_exception()
            output["exceptions"] += 1
    else:
        output["exceptions"] += 1

    try:
        uncaught = grader.uncaught_end_tests()
    except BaseException:
        uncaught = 0
    if uncaught:
        output["submission"]["exception"] = builtins_gettext(INTERFERED)
        output["submission"]["status"] = "caught"
    return output


def builtins_gettext(message: str) -> str:
    translate = getattr(builtins, "_", None)
    if callable(translate):
        try:
            value = translate(message)
            if isinstance(value, str):
                return value
        except Exception:
            pass
    return message


def _text(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _opt_text(value: object) -> str | None:
    if value is None:
        return None
    return _text(value)


def run_staff(job: dict[str, Any], harness_pid: int) -> dict[str, Any]:
    limit = int(job.get("output_limit", 65536))
    grader_name = job["grader_name"]
    prepare: dict[str, Any] = {"status": "notrun"}
    seed_randomness(int(job["seed"]))
    grader_mod, res = import_captured(grader_name, job["grader_source"], grader_name + ".py", limit, True)
    if grader_mod is None or not hasattr(grader_mod, "grader"):
        # The course grader itself is broken: a staff problem, not the submission's.
        prepare["status"] = "grader_error"
        prepare["exception"] = res.get("exception") or "grader module defines no 'grader'"
        return {"prepare": prepare, "grader": res}
    grader = grader_mod.grader
    try:
        with captured_stdout(limit):
            errors = grader.input_errors(job["submission"])
            errors = [_text(e) for e in errors if e]
            if errors:
                return {"prepare": {"status": "ok", "input_errors": errors}}
            processed_answer = grader.preprocess(job["answer"])
            processed_submission = grader.preprocess(job["submission"])
        if not isinstance(processed_answer, str) or not isinstance(processed_submission, str):
            raise TypeError("a preprocessor returned something other than a string")
    except BaseException:
        return {"prepare": {"status": "error", "exception": format_exception()}}
    # The staff run gets a fresh grader, as in the original where input checks ran in another
    # process than the staff run: no state from preprocessing leaks into the tests.
    output = run_tests(job, processed_answer, harness_pid)
    output["prepare"] = {"status": "ok", "input_errors": [], "processed_submission": processed_submission}
    grader_mod_now = sys.modules.get(grader_name)
    tests = getattr(getattr(grader_mod_now, "grader", None), "tests", lambda: [])()
    output["default_compare"] = [gradelib.has_default_comparison(t) for t in tests]
    return output


def run_compare(job: dict[str, Any], harness_pid: int) -> dict[str, Any]:
    limit = int(job.get("output_limit", 65536))
    grader_name = job["grader_name"]
    seed_randomness(int(job["seed"]))
    grader_mod, res = import_captured(grader_name, job["grader_source"], grader_name + ".py", limit, True)
    if grader_mod is None or not hasattr(grader_mod, "grader"):
        return {"status": "error", "exception": res.get("exception") or "grader module defines no 'grader'"}
    verdicts: list[list[Any]] = []
    try:
        tests = grader_mod.grader.tests()
        for test, (expected, actual) in zip(tests, job["pairs"], strict=False):
            suffix = ""
            with captured_stdout(limit):
                try:
                    correct = bool(test.compare_results(expected, actual))
                except gradelib.EndTest as exc:
                    suffix = "\n*** {}: {} ***".format(builtins_gettext("ERROR"), exc)
                    correct = False
            verdicts.append([correct, suffix])
    except BaseException:
        return {"status": "error", "exception": format_exception()}
    return {"status": "ok", "verdicts": verdicts}


def run_script(job: dict[str, Any]) -> int:
    """Run ``job['code']`` as ``__main__``; returns the exit status."""
    for name, content_b64 in (job.get("files") or {}).items():
        with open(name, "wb") as fh:
            fh.write(base64.b64decode(content_b64))
    source = job["code"]
    filename = job.get("filename", "main.py")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": filename, "__builtins__": builtins}
    try:
        exec(compile(source, filename, "exec", dont_inherit=True), namespace)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        sys.stderr.write(format_exception(filename))
        return 1
    return 0


def write_channel(fd: int, document: dict[str, Any]) -> None:
    data = json.dumps(document, ensure_ascii=False).encode("utf-8", "replace")
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.close(fd)


def main(job: dict[str, Any], channel_fd: int) -> int:
    """Entry point inside the sandboxed child; returns the exit status."""
    harness_pid = os.getpid()
    install_translations(job.get("translations"))
    mode = job["mode"]
    if mode == "script":
        status = run_script(job)
        _flush_std()
        return status
    if mode == "staff":
        document = run_staff(job, harness_pid)
    elif mode == "student":
        document = run_tests(job, job["code"], harness_pid)
    elif mode == "compare":
        document = run_compare(job, harness_pid)
    else:
        document = {"error": f"unknown mode {mode!r}"}
    _guard_pid(harness_pid)
    _flush_std()
    write_channel(channel_fd, document)
    return 0


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
