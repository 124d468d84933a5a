"""Edge validation: the checks request data passes before any handler, the database or storage uses it.

Pure functions only. Everything a client sends is text that PostgreSQL and our own code can handle
after these checks: no lone surrogates (they cannot be encoded as UTF-8), no NUL (PostgreSQL text
cannot hold it), only real text charsets, JSON without NaN/Infinity or absurd nesting, finite numbers
in range, and names of a known shape. A failed check raises ``InputError`` with a message meant for
the client; the caller wraps it in the reply format of its API.
"""

from __future__ import annotations

import codecs
import encodings
import encodings.aliases
import json
import math
import re
from collections.abc import Iterable
from typing import Any


class InputError(ValueError):
    """Request data we refuse; ``message`` is safe to show to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------------------------------- charsets
# Real text encodings only. Python's codec registry also knows codecs such as unicode_escape, rot13,
# base64 or idna, which are not charsets: a client naming one must not pick our decoder.
_TEXT_CODECS = frozenset(
    ["utf_8", "ascii", "latin_1", "utf_16", "utf_16_le", "utf_16_be", "utf_32", "utf_32_le", "utf_32_be"]
    + [f"iso8859_{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)]
    + [f"cp125{n}" for n in range(9)]
)


def _charset_key(name: str) -> str:
    return encodings.normalize_encoding(name.strip().strip('"').strip().lower())


def _accepted_charset_names() -> dict[str, str]:
    """Every spelling we accept (codec names and their registered aliases) -> the codec's name.

    Built once from the standard library's alias table, so a client's charset name is only ever
    looked up in this dict, never handed to ``codecs.lookup`` (whose cache grows per unknown name).
    """
    accepted = {codec: codec for codec in _TEXT_CODECS}
    accepted.update({alias: codec for alias, codec in encodings.aliases.aliases.items() if codec in _TEXT_CODECS})
    names = {}
    for spelling, codec in accepted.items():
        info = codecs.lookup(codec)
        assert info._is_text_encoding, codec
        names[_charset_key(spelling)] = info.name
    return names


ACCEPTED_CHARSETS = _accepted_charset_names()


def text_codec(charset: str | None, default: str = "utf-8") -> str:
    """The codec to decode a body or part declared with ``charset`` (None: ``default``)."""
    if charset is None or charset == "":
        return default
    codec = ACCEPTED_CHARSETS.get(_charset_key(charset)) if len(charset) <= 64 else None
    if codec is None:
        shown = charset[:40].encode("ascii", "backslashreplace").decode("ascii")
        raise InputError(f"unsupported charset '{shown}': use utf-8")
    return codec


def decode_text(data: bytes, codec: str, what: str) -> str:
    try:
        return data.decode(codec)  # strict: undecodable input is an error, never silently replaced
    except UnicodeDecodeError:
        raise InputError(f"{what} is not valid {codec} text") from None


# ---------------------------------------------------------------------------------------------- text
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}\Z")  # \Z: "$" would let a final newline in


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None. Lone surrogates cannot be encoded in UTF-8
    (they come from JSON escapes such as \\ud800, exotic codecs or non-UTF-8 header bytes)."""
    if "\x00" in value:
        return "contains a NUL character"
    if not value.isascii() and _SURROGATE.search(value):  # isascii: O(1) for str, and most text is ASCII
        return "is not valid Unicode (lone surrogate)"
    return None


def check_text(value: str, what: str, *, max_chars: int | None = None, controls: bool = True) -> str:
    problem = text_problem(value)
    if problem is None and not controls and _CONTROL.search(value):
        problem = "contains control characters"
    if problem is None and max_chars is not None and len(value) > max_chars:
        problem = f"is longer than {max_chars} characters"
    if problem is not None:
        raise InputError(f"{what} {problem}")
    return value


def check_file_name(name: str) -> str:
    """A submitted file's name (the multipart field name): text a grader can use, of sane length."""
    if name == "":
        raise InputError("file names must not be empty")
    return check_text(name, "file name", max_chars=255, controls=False)


# ---------------------------------------------------------------------------------------------- JSON
MAX_JSON_DEPTH = 32


class NotJson(InputError):
    """The text is not JSON at all (as opposed to JSON with values we refuse)."""


def _reject_constant(name: str) -> Any:
    raise InputError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError("a number is out of range")
    return value


def parse_json(text: str, what: str = "JSON") -> Any:
    """Strict JSON: no NaN/Infinity, finite numbers, bounded nesting, every string storable text."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except InputError as exc:
        raise InputError(f"{what}: {exc.message}") from None
    except RecursionError:
        raise InputError(f"{what} is nested too deeply") from None
    except ValueError:  # JSONDecodeError, or an integer of more than 4300 digits
        raise NotJson(f"{what} is not valid JSON") from None
    _check_json_value(value, what)
    return value


def _check_json_value(value: Any, what: str) -> None:
    """Walk the decoded value without recursion: depth and every string (keys included)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if text_problem(item) is not None:
                raise InputError(f"{what} holds a string that {text_problem(item)}")
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InputError(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
            children: Iterable[Any] = (
                [*item.keys(), *item.values()] if isinstance(item, dict) else item
            )
            stack.extend((child, depth + 1) for child in children)


def parse_json_object(text: str, what: str = "body") -> dict[str, Any]:
    try:
        value = parse_json(text, what)
    except InputError as exc:
        raise InputError(f"{what} must be a JSON object: {exc.message}") from None
    if not isinstance(value, dict):
        raise InputError(f"{what} must be a JSON object")
    return value


# ---------------------------------------------------------------------------------------------- numbers
def bounded_number(value: Any, what: str, minimum: float, maximum: float) -> float:
    """A JSON number (not a bool) that is finite and within (minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{what} must be a number")
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond float range
        raise InputError(f"{what} must be at most {maximum:g}") from None
    if not math.isfinite(as_float) or as_float <= minimum or as_float > maximum:
        raise InputError(f"{what} must be greater than {minimum:g} and at most {maximum:g}")
    return as_float
