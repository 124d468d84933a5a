"""A course's grader root as the engine uses it: the ``grader_payload`` of a problem, the lexical
and resolved checks of its grader path, reading the problem's files and its gettext catalogue.

Everything here is about course content, not about the XQueue wire protocol (``protocol.py``);
the payload helpers are also what custom handlers use (``xqueue_grader.library``).
"""

from __future__ import annotations

import base64
import gettext
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from xqueue_grader.protocol import ProtocolError


class PayloadError(ProtocolError):
    """A ``grader_payload`` (or the grader path in it) that cannot be used; the course's mistake.

    A ProtocolError because the payload travels inside the LMS body: callers that reject an
    unusable body reject an unusable payload the same way.
    """


class ProblemError(Exception):
    """The course files for a problem cannot be used (missing, unreadable, outside the root)."""


# -- grader_payload ------------------------------------------------------------------------------

def parse_grader_payload(payload: str) -> dict[str, Any]:
    """``grader_payload`` is JSON text written by the course author (often with whitespace)."""
    try:
        config = json.loads(payload)
    except ValueError:
        raise PayloadError("grader_payload is not JSON") from None
    if not isinstance(config, dict):
        raise PayloadError("grader_payload is not a JSON object")
    return config


def flag(config: dict[str, Any], name: str) -> bool:
    """Payload flags arrive as booleans or strings ("true") depending on how XML was written."""
    value = config.get(name, False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass(frozen=True)
class GraderPayload:
    """What the gradelib pipeline reads from a payload; ``grader`` and ``lang`` are checked where
    they are used (a skipped problem needs no grader path)."""

    grader: Any
    lang: Any
    skip_grader: bool
    hide_output: bool

    @classmethod
    def parse(cls, payload: str) -> GraderPayload:
        config = parse_grader_payload(payload)
        return cls(grader=config.get("grader"), lang=config.get("lang"),
                   skip_grader=flag(config, "skip_grader"), hide_output=flag(config, "hide_output"))


# -- grader paths --------------------------------------------------------------------------------

def check_grader_path(relative: Any) -> str:
    """Lexical check of the payload's ``grader`` path; returns it normalised.

    Rejects absolute paths, ``..`` anywhere, NUL bytes and empty names.  The caller must also
    check the resolved (symlink-free) path stays inside the grader root (``load_problem`` does).
    """
    if not isinstance(relative, str) or not relative.strip():
        raise PayloadError("grader_payload has no 'grader' path")
    if "\x00" in relative or "\\" in relative:
        raise PayloadError("grader path contains forbidden characters")
    if relative.startswith("/"):
        raise PayloadError("grader path must be relative to the grader root")
    parts = relative.split("/")
    if any(part == ".." for part in parts):
        raise PayloadError("grader path must not contain '..'")
    normalised = posixpath.normpath(relative)
    if normalised in (".", "") or normalised.startswith("../"):
        raise PayloadError("grader path must name a file below the grader root")
    if not normalised.endswith(".py"):
        raise PayloadError("grader path must name a .py file")
    return normalised


def is_inside(path: str, root: str) -> bool:
    """Both paths already resolved (realpath); True when ``path`` is ``root`` or below it."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/")


def module_name_for(grader_path: str) -> str:
    """A Python identifier for the grader module (the file's stem, sanitised)."""
    stem = posixpath.splitext(posixpath.basename(grader_path))[0]
    name = re.sub(r"\W", "_", stem) or "grader"
    if name[0].isdigit():
        name = "_" + name
    if name == "submission":
        name = "grader_submission"  # the student's module owns the name "submission"
    return name


# -- reading a problem ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ProblemFiles:
    grader_path: str
    grader_source: str
    answer: str
    module_name: str


def load_problem(grader_root: str, relative: str) -> ProblemFiles:
    """Read a problem's grader file and ``answer.py``; both must resolve inside the grader root.

    ``relative`` must already have passed ``check_grader_path``.
    """
    root = os.path.realpath(grader_root)
    grader_path = os.path.realpath(os.path.join(root, relative))
    answer_path = os.path.realpath(os.path.join(os.path.dirname(grader_path), "answer.py"))
    for path in (grader_path, answer_path):
        if not is_inside(path, root):
            raise ProblemError("a course file resolves outside the grader root")
    try:
        with open(grader_path, encoding="utf-8") as fh:
            source = fh.read()
        with open(answer_path, encoding="utf-8") as fh:
            answer = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemError(f"cannot read course file: {type(exc).__name__}") from None
    return ProblemFiles(grader_path, source, answer, module_name_for(relative))


class Translations:
    """The course's gettext catalogue per language (``conf/locale/<lang>/LC_MESSAGES/graders.mo``)."""

    def __init__(self, grader_root: str) -> None:
        self.localedir = os.path.join(grader_root, "conf", "locale")
        self._cache: dict[str, tuple[float, gettext.NullTranslations, str | None]] = {}

    def get(self, lang: Any) -> tuple[gettext.NullTranslations, str | None]:
        """(translator for daemon-side messages, base64 catalogue for the sandbox)."""
        if not isinstance(lang, str) or not lang or "/" in lang or lang.startswith("."):
            lang = "en"
        path = gettext.find("graders", self.localedir, [lang])
        if not path:
            return gettext.NullTranslations(), None
        try:
            mtime = os.stat(path).st_mtime
            cached = self._cache.get(lang)
            if cached and cached[0] == mtime:
                return cached[1], cached[2]
            with open(path, "rb") as fh:
                data = fh.read()
            translator: gettext.NullTranslations = gettext.GNUTranslations(_BytesReader(data))
        except (OSError, ValueError):
            return gettext.NullTranslations(), None
        encoded = base64.b64encode(data).decode("ascii")
        self._cache[lang] = (mtime, translator, encoded)
        return translator, encoded


class _BytesReader:
    """Minimal file object for GNUTranslations (it only calls read())."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.name = "graders.mo"

    def read(self) -> bytes:
        return self._data
