"""The gradelib API that course graders written for xqueue-watcher use.

A course grader file builds ``grader = gradelib.Grader()`` and registers tests, input checks and
preprocessors on it.  This module is our own implementation of that public API (names, signatures,
default messages and observable behaviour as described in xqueue-protocol.md section 7.3), so that
existing course graders run unchanged.  Legacy graders import it as ``gradelib`` or
``grader_support.gradelib``; both names resolve to this very module object (see ``runtime/legacy``),
so ``gradelib.rand`` and ``EndTest`` are shared no matter which name a grader used.

This module runs inside the sandbox (staff run, student run, comparison run) and must stay free of
anything secret or privileged.
"""

from __future__ import annotations

import builtins
import contextlib
import inspect
import io
import random
import re
import sys
import tokenize
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Seeded by the harness before the grader is imported; the staff run and the student run use the
# same seed, so random test inputs are identical in both.
rand = random.Random(1)

InputCheck = Callable[[str], "str | None"]
Preprocessor = Callable[[str], str]


def _(message: str) -> str:
    """Translate a message with the catalogue the harness installed (gettext's ``_`` builtin).

    Graders used ``_`` as a builtin installed by gettext; when this module is used outside the
    harness (a course team testing a grader locally) no catalogue is installed and the message is
    returned as is.
    """
    translate = getattr(builtins, "_", None)
    if callable(translate) and translate is not _:
        try:
            result = translate(message)
        except Exception:
            return message
        if isinstance(result, str):
            return result
    return message


class EndTest(Exception):
    """Raised by a test (usually via ``grader.end_test``) to stop that test early."""

    def __init__(self, message: object = None) -> None:
        super().__init__(message)


class Test:
    """A test function with its descriptions.

    ``test_fn(submission_module)`` prints text; that text is compared with what the same function
    printed for the staff answer.  ``compare(expected, actual) -> bool`` replaces the default
    equality comparison.
    """

    def __init__(
        self,
        test_fn: Callable[..., Any],
        short_description: str,
        detailed_description: str | None = "",
        compare: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._test_fn = test_fn
        self.short_description = short_description
        self.detailed_description = detailed_description
        if compare:
            # An instance attribute shadows the method, as graders expect.
            setattr(self, "compare_results", compare)  # noqa: B010 - a method cannot be assigned typed

    def __call__(self, *args: Any) -> Any:
        return self._test_fn(*args)

    def compare_results(self, expected: str, actual: str) -> bool:
        """True when the student's output passes; runs outside the student's process."""
        return expected == actual


def has_default_comparison(test: object) -> bool:
    """Whether a test compares with plain equality (then the daemon can compare by itself)."""
    if not isinstance(test, Test):
        return False
    if "compare_results" in vars(test):
        return False
    return type(test).compare_results is Test.compare_results


class Grader:
    """Holds the tests, input checks and preprocessors of one problem."""

    def __init__(self) -> None:
        self._tests: list[Any] = []
        self._input_checks: list[InputCheck] = []
        self._preprocessors: list[Preprocessor] = [fix_line_endings]
        # EndTest raised minus EndTest seen by the harness: a positive count at the end means the
        # student's code swallowed one (a bare ``except``).
        self._end_tests = 0

    # -- interface used by the harness -------------------------------------------------------
    def input_errors(self, submission_str: str) -> list[str]:
        """Complaints that prevent running the submission; never runs it."""
        complaints = [check(submission_str) for check in self._input_checks]
        return [c for c in complaints if c]

    def preprocess(self, submission_str: str) -> str:
        """The text to actually run: every preprocessor in order."""
        text = submission_str
        for fn in self._preprocessors:
            text = fn(text)
        return text

    def tests(self) -> list[Any]:
        return self._tests

    def end_test(self, message: object) -> None:
        """End the current test with a message shown in the student's output."""
        self._end_tests += 1
        print(_("*** Error: {0}").format(message))
        raise EndTest()

    def caught_end_test(self) -> None:
        self._end_tests -= 1

    def uncaught_end_tests(self) -> int:
        return self._end_tests

    # -- set-up used by grader files ---------------------------------------------------------
    def add_preprocessor(self, fn: Preprocessor) -> None:
        self._preprocessors.append(fn)

    def add_test(self, test: Any) -> None:
        self._tests.append(test)

    def add_tests_from_class(self, test_class: type) -> None:
        """One test per ``test_*`` method, in name order; the docstring is the long description."""
        instance = test_class()
        compare = getattr(instance, "compare_results", None)
        for name, method in inspect.getmembers(instance, inspect.ismethod):
            if name.startswith("test_"):
                short = "Test: " + name[len("test_"):].replace("_", " ")
                self.add_test(Test(method, short, method.__doc__, compare))

    def add_input_check(self, check: InputCheck) -> None:
        self._input_checks.append(check)


# -- preprocessors ---------------------------------------------------------------------------

def wrap_in_string(code: str) -> str:
    """Turn the submission into ``submission_code = '<code>'`` so tests can exec it repeatedly."""
    return "submission_code = " + repr(code)


def fix_line_endings(code: str) -> str:
    return code.replace("\r", "")


# -- input checks ----------------------------------------------------------------------------

def required_substring(string: str, error_msg: str | None = None) -> InputCheck:
    def check(code: str) -> str | None:
        if string not in code:
            return error_msg or _("Your code should contain '{0}'.").format(string)
        return None

    return check


def prohibited_substring(string: str, error_msg: str | None = None) -> InputCheck:
    def check(code: str) -> str | None:
        if string in code:
            return error_msg or _("Your code should not contain '{0}'.").format(string)
        return None

    return check


def _tokens(code: str) -> Iterator[tokenize.TokenInfo]:
    # A trailing newline avoids tokenizer corner cases on the last line.
    text = code.rstrip() + "\n"
    return tokenize.generate_tokens(io.StringIO(text).readline)


def _count_tokens(code: str, string: str) -> int:
    """How often ``string`` appears as a token outside comments and string literals."""
    count = 0
    try:
        for tok in _tokens(code):
            if tok.type in (tokenize.COMMENT, tokenize.STRING):
                continue
            if tok.string == string:
                count += 1
    except Exception:
        # Code that does not tokenize fails later, when it runs, with a clearer message.
        pass
    return count


def prohibited_keyword(string: str, error_msg: str | None = None) -> InputCheck:
    def check(code: str) -> str | None:
        if _count_tokens(code, string) > 0:
            return error_msg or _('Your code cannot make use of the "{0}" keyword.').format(string)
        return None

    return check


def required_keyword(string: str, error_msg: str | None = None) -> InputCheck:
    def check(code: str) -> str | None:
        if _count_tokens(code, string) == 0:
            return error_msg or _('Your code must make use of the "{0}" keyword.').format(string)
        return None

    return check


prohibited_operator = prohibited_keyword
required_operator = required_keyword


def input_check_or(error_msg: str, *checks: InputCheck) -> InputCheck:
    """Passes when any of ``checks`` passes."""

    def check(code: str) -> str | None:
        if any(c(code) is None for c in checks):
            return None
        return error_msg

    return check


def one_of_required_keywords(strings: Iterable[str], error_msg: str | None = None) -> InputCheck:
    wanted = list(strings)

    def check(code: str) -> str | None:
        if any(_count_tokens(code, s) > 0 for s in wanted):
            return None
        return error_msg or _(
            "Your code must make use of at least one of the following keywords: {0}."
        ).format(wanted)

    return check


def _check_occurs(
    text: str | None,
    occurs: int,
    at_least: int | None = None,
    at_most: int | None = None,
    exactly: int | None = None,
    error_msg: str | None = None,
) -> str | None:
    if exactly is not None and occurs != exactly:
        return error_msg or _("Your code has {0!r} {1} times, must be exactly {2}.").format(
            text, occurs, exactly
        )
    if at_least is not None and occurs < at_least:
        return error_msg or _("Your code has {0!r} {1} times, must be at least {2}.").format(
            text, occurs, at_least
        )
    if at_most is not None and occurs > at_most:
        return error_msg or _("Your code has {0!r} {1} times, can't be more than {2}.").format(
            text, occurs, at_most
        )
    return None


def substring_occurs(
    string: str,
    at_least: int | None = None,
    at_most: int | None = None,
    exactly: int | None = None,
    error_msg: str | None = None,
    ignore_spacing: bool = False,
) -> InputCheck:
    def check(code: str) -> str | None:
        if ignore_spacing:
            occurs = code.replace(" ", "").count(string.replace(" ", ""))
        else:
            occurs = code.count(string)
        return _check_occurs(string, occurs, at_least, at_most, exactly, error_msg)

    return check


def substring_occurs_if_condstring(
    string: str,
    condstring: str,
    at_least: int | None = None,
    at_most: int | None = None,
    exactly: int | None = None,
    error_msg: str | None = None,
) -> InputCheck:
    """Like ``substring_occurs``, but only checked when ``condstring`` appears in the code."""

    def check(code: str) -> str | None:
        if condstring not in code:
            return None
        return _check_occurs(string, code.count(string), at_least, at_most, exactly, error_msg)

    return check


def token_occurs(
    string: str,
    at_least: int | None = None,
    at_most: int | None = None,
    exactly: int | None = None,
    error_msg: str | None = None,
) -> InputCheck:
    def check(code: str) -> str | None:
        return _check_occurs(string, _count_tokens(code, string), at_least, at_most, exactly, error_msg)

    return check


def count_non_comment_lines(
    at_least: int | None = None,
    at_most: int | None = None,
    exactly: int | None = None,
    error_msg: str | None = None,
) -> InputCheck:
    """Checks the number of lines holding code (not blank, not only comments or strings)."""

    def check(code: str) -> str | None:
        rows: set[int] = set()
        try:
            for tok in _tokens(code):
                if tok.type in (tokenize.COMMENT, tokenize.STRING):
                    continue
                if not tok.string.strip():
                    continue
                rows.add(tok.start[0])
        except Exception:
            pass
        return _check_occurs(None, len(rows), at_least, at_most, exactly, error_msg)

    return check


def must_define_function(fn_name: str, error_msg: str | None = None) -> InputCheck:
    pattern = re.compile(rf"\bdef\s+{fn_name}\b")

    def check(code: str) -> str | None:
        if not pattern.search(code):
            return error_msg or _("Your code must define a function named '{0}'.").format(fn_name)
        return None

    return check


def prohibited_function_definition(fn_name: str, error_msg: str | None = None) -> InputCheck:
    pattern = re.compile(rf"\bdef\s+{fn_name}\b")

    def check(code: str) -> str | None:
        if pattern.search(code):
            return error_msg or _("Your code should NOT define a function named '{0}'.").format(fn_name)
        return None

    return check


def must_define_class(class_name: str, error_msg: str | None = None) -> InputCheck:
    def check(code: str) -> str | None:
        if "class " + class_name not in code:
            return error_msg or _(
                "Your code must define a class named '{0}'. Be sure you only have one space "
                "between the keyword 'class' and the class name."
            ).format(class_name)
        return None

    return check


def _code_lines_without_comments(code: str) -> list[str]:
    lines = []
    for line in code.split("\n"):
        hash_at = line.find("#")
        # Like the original: the text before the first '#', or the line minus its last
        # character when there is no '#'.
        lines.append(line[:hash_at])
    return lines


def prohibited_class_method(class_name: str, method_name: str, error_msg: str | None = None) -> InputCheck:
    method_re = re.compile(rf"\bdef\s+{method_name}\b")

    def check(code: str) -> str | None:
        in_class = False
        for line in _code_lines_without_comments(code):
            if not line.replace(" ", ""):
                continue
            if "class " + class_name in line:
                in_class = True
            elif in_class and method_re.search(line):
                return error_msg or _(
                    "The class named '{0}' should not define a method named {1}."
                ).format(class_name, method_name)
            elif in_class and "class " in line:
                # A following class ends the one we were in, unless it is a subclass of it.
                if class_name not in line or "(" + class_name + ")" in line.replace(" ", ""):
                    in_class = False
        return None

    return check


def required_class_method(class_name: str, method_name: str, error_msg: str | None = None) -> InputCheck:
    method_re = re.compile(rf"\bdef\s+{method_name}\b")

    def check(code: str) -> str | None:
        in_class = False
        for line in _code_lines_without_comments(code):
            if not line.replace(" ", ""):
                continue
            if "class " + class_name in line:
                in_class = True
            elif in_class and method_re.search(line):
                return None
            elif in_class and "class " in line and class_name not in line:
                in_class = False
        return error_msg or _("The class named '{0}' should define a method named {1}.").format(
            class_name, method_name
        )

    return check


# -- test helpers ----------------------------------------------------------------------------

@contextlib.contextmanager
def capture_stdout() -> Iterator[io.StringIO]:
    saved = sys.stdout
    buffer = io.StringIO()
    sys.stdout = buffer
    try:
        yield buffer
    finally:
        sys.stdout = saved


def exec_wrapped_code(
    environment: dict[str, Any] | None = None,
    post_process: Callable[[str], str] | None = None,
) -> Callable[[Any], None]:
    """A test that execs ``submission_code`` (see ``wrap_in_string``) and prints its output."""
    env = {} if environment is None else environment

    def test_fn(submission_module: Any) -> None:
        with capture_stdout() as out:
            exec(submission_module.submission_code, env)
        text = out.getvalue()
        if post_process:
            text = post_process(text)
        print(text)

    return test_fn


def exec_code_and_inspect_values(
    environment: dict[str, Any] | None = None,
    vars_to_inspect: Iterable[str] | None = None,
    post_process: Callable[[str], str] | None = None,
) -> Callable[[Any], None]:
    """A test that execs ``submission_code`` and prints the values of some variables.

    The code's own output is discarded.  Each inspected variable is printed (its value, as the
    documented behaviour says; a missing variable fails the test with a NameError-style message).
    ``post_process`` is accepted for signature compatibility.
    """
    env = {} if environment is None else environment
    names = list(vars_to_inspect or [])

    def test_fn(submission_module: Any) -> None:
        with capture_stdout():
            exec(submission_module.submission_code, env)
        for name in names:
            if name not in env:
                print(f"name '{name}' is not defined")
                continue
            print(env[name])

    return test_fn


def trace_wrapped_code(inspector: Any, error_msg: str) -> Callable[[Any], None]:
    def test_fn(submission_module: Any) -> None:
        inspector.set_source(submission_module.submission_code)
        with inspector:
            for report in inspector.inspect_dispatch():
                if not report:
                    print(error_msg)

    return test_fn


def invoke_student_function(
    fn_name: str,
    args: Iterable[Any],
    environment: dict[str, Any] | None = None,
    output_writer: Callable[[Any], str] | None = None,
) -> Callable[[Any], None]:
    """A test that calls the student's ``fn_name(*args)`` and prints ``output_writer(result)``."""
    writer = output_writer or repr
    call_args = list(args)

    def test_fn(submission_module: Any) -> None:
        for name, value in (environment or {}).items():
            setattr(submission_module, name, value)
        fn = getattr(submission_module, fn_name)
        print(writer(fn(*call_args)))

    return test_fn


class InvokeStudentFunctionTest(Test):
    """A Test calling one student function; short description ``Test: fn(arg1, arg2)``."""

    def __init__(
        self,
        fn_name: str,
        args: Iterable[Any],
        environment: dict[str, Any] | None = None,
        output_writer: Callable[[Any], str] | None = None,
        short_desc: str | None = None,
        detailed_desc: str | None = None,
        compare: Callable[[str, str], bool] | None = None,
    ) -> None:
        call_args = list(args)
        if short_desc is None:
            short_desc = "Test: {}({})".format(fn_name, ", ".join(repr(a) for a in call_args))
        super().__init__(
            invoke_student_function(fn_name, call_args, environment, output_writer),
            short_desc,
            detailed_desc,
            compare,
        )


def round_float_writer(n: int) -> Callable[[float], str]:
    """An output writer printing a float with ``n`` decimals (avoids rounding noise)."""

    def writer(value: float) -> str:
        return f"{value:.{n}f}"

    return writer
