"""Typed settings whose fields declare their environment variables, and the one coercion all packages use.

A settings class is a dataclass; each field read from the environment says so with ``env()``::

    @dataclass(frozen=True)
    class Settings:
        queue: str = env("XQGRADER_QUEUE")                       # required: no default
        slots: int = env("XQGRADER_SLOTS", default=2, min=1)
        drain_seconds: float = env("XQGRADER_DRAIN_SECONDS", default=60.0, parse=parse_duration)
        password: str | None = env("XQGRADER_PASSWORD", default=None, secret=True)

    settings = load(Settings, os.environ)

Coercion follows the field's type (or the field's ``parse``), the same way for every package:

- ``bool``: ``1/0``, ``true/false``, ``yes/no``, ``on/off`` in any case (surrounding blanks ignored);
  anything else is an error ("... is not a boolean").
- ``int``: a whole number (a YAML float such as ``5.0`` is accepted, ``5.5`` is an error); ``float``: a
  finite number (``nan`` and ``inf`` are errors). ``min``/``max`` bound both.
- durations (``parse=parse_duration``): a number of seconds, or a number with one unit ``ms``, ``s``,
  ``m`` or ``h`` (``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``); the result is seconds as a float.
- ``tuple[str, ...]``: comma-separated, each item stripped, empty items dropped (a YAML list as is).
- ``X | None``: an empty string means ``None``.
- a blank variable leaves a number, boolean or choice at its default (it has no blank value); text and
  lists take it as given (``""``, ``()``).
- ``Literal[...]``: one of the listed values; ``Enum`` subclasses: a member's value or name.
- ``str``: as given.

Every problem is collected and reported together in one ``SettingsError``, each naming the variable.
A value is quoted in the message only when its field is not ``secret``; secret fields are also kept out
of ``repr()``. Pure: nothing here reads anything but the mapping it is given.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

_META_KEY = "xqueue_env"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
BOOL_WORDS = "1/0, true/false, yes/no or on/off"
# Types whose blank value (an empty or all-blank variable) means "not set": nothing else reads it.
_BLANK_IS_UNSET = (bool, int, float)
_DURATION = re.compile(r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>ms|s|m|h)?")
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Problem(str):
    """One problem's sentence (``"{name} {reason}"``), with ``name`` and ``reason`` kept apart for callers
    that phrase their messages differently."""

    name: str
    reason: str

    def __new__(cls, name: str, reason: str) -> Problem:
        self = super().__new__(cls, f"{name} {reason}")
        self.name, self.reason = name, reason
        return self


class SettingsError(ValueError):
    """One or more settings are missing or malformed; ``problems`` lists each, naming its variable."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: tuple[str, ...] = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """What ``env()`` records on a field."""

    name: str
    parse: Callable[[str], Any] | None = None
    secret: bool = False
    min: float | None = None
    max: float | None = None


def env(name: str, *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
        parse: Callable[[str], Any] | None = None, secret: bool = False,
        min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field read from the environment variable ``name`` (no default: the variable is required).

    ``parse`` replaces the type-driven coercion for text values (it raises ValueError with a short reason);
    ``secret`` keeps the value out of repr() and error messages; ``min``/``max`` bound numbers.
    """
    spec = EnvSpec(name=name, parse=parse, secret=secret, min=min, max=max)
    return dataclasses.field(default=default, default_factory=default_factory, repr=not secret,
                             metadata={_META_KEY: spec})


def env_spec(f: dataclasses.Field[Any]) -> EnvSpec | None:
    spec = f.metadata.get(_META_KEY)
    return spec if isinstance(spec, EnvSpec) else None


def variables(cls: type) -> list[tuple[str, EnvSpec]]:
    """(field name, spec) of every field that declares a variable, in declaration order (docs, checks)."""
    return [(f.name, spec) for f in dataclasses.fields(cls) if (spec := env_spec(f)) is not None]


# ------------------------------------------------------------------------------------------ parsers


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"is not a boolean: use {BOOL_WORDS}")


def parse_duration(text: str) -> float:
    """Seconds from ``"30"``, ``"30s"``, ``"1.5m"``, ``"1h"`` or ``"250ms"``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError("must be a duration: seconds, or a number with ms, s, m or h")
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds):
        raise ValueError("must be a finite duration")
    return seconds


def parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


# ----------------------------------------------------------------------------------------- coercion


def _optional_inner(tp: Any) -> Any | None:
    """X for ``X | None`` / ``Optional[X]``, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _quoted(value: Any, secret: bool) -> str:
    if secret:
        return ""
    text = repr(value)
    return f" (got {text[:60]}{'...' if len(text) > 60 else ''})"


def _number(value: Any, kind: type) -> float | int:
    if isinstance(value, bool):
        raise ValueError
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return int(value if isinstance(value, int) else str(value).strip())
    number = float(value if isinstance(value, int | float) else str(value).strip())
    if not math.isfinite(number):
        raise ValueError
    return number


def coerce(value: Any, tp: Any, label: str, *, parse: Callable[[str], Any] | None = None,
           secret: bool = False) -> Any:
    """``value`` (environment text or a YAML value) as type ``tp``; a SettingsError names ``label``."""
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        tp = inner
    try:
        if parse is not None and isinstance(value, str):
            return parse(value)
        if tp is bool:
            return value if isinstance(value, bool) else parse_bool(str(value))
        if tp is int or tp is float:
            try:
                return _number(value, tp)
            except (TypeError, ValueError):
                raise ValueError("must be a number (an integer)" if tp is int else "must be a number") from None
        if tp is str:
            if value is None or isinstance(value, dict | list):
                raise ValueError("must be text")
            return str(value)
        origin = typing.get_origin(tp)
        if origin is tuple:
            if isinstance(value, str):
                return parse_list(value)
            if isinstance(value, list | tuple) and all(isinstance(v, str | int | float) for v in value):
                return tuple(str(v) for v in value)
            raise ValueError("must be a comma-separated list")
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value in choices:
                return value
            raise ValueError("must be one of " + ", ".join(str(c) for c in choices))
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            for member in tp:
                if value == member.value or value == member.name or str(member.value) == str(value):
                    return member
            raise ValueError("must be one of " + ", ".join(str(m.value) for m in tp))
    except ValueError as exc:
        reason = str(exc) or "is malformed"
        raise SettingsError([Problem(label, reason + _quoted(value, secret))]) from None
    raise SettingsError([Problem(label, f"has no coercion for type {tp!r} (declare parse=)")])


def _check_bounds(value: Any, spec: EnvSpec, label: str) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if spec.min is not None and value < spec.min:
        return Problem(label, f"must be at least {spec.min:g}{_quoted(value, spec.secret)}")
    if spec.max is not None and value > spec.max:
        return Problem(label, f"must be at most {spec.max:g}{_quoted(value, spec.secret)}")
    return None


def _blank_means_unset(tp: Any) -> bool:
    """Numbers, booleans and choices have no blank value: a blank variable leaves them at their default."""
    if _optional_inner(tp) is not None:
        return False
    if tp in _BLANK_IS_UNSET or typing.get_origin(tp) is typing.Literal:
        return True
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# ---------------------------------------------------------------------------------------- loading


def read_env(cls: type, environ: Mapping[str, str], *, blank_is_unset: bool = False) -> dict[str, Any]:
    """The coerced values of the fields whose variable is set in ``environ`` (field name -> value).

    A blank variable of a number, boolean or choice field counts as unset (the field keeps its default);
    text, list and optional fields take it as given. ``blank_is_unset``: every blank variable counts as unset.
    """
    hints = _hints(cls)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, spec in variables(cls):
        raw = environ.get(spec.name)
        if raw is None or (raw.strip() == "" and (blank_is_unset or _blank_means_unset(hints[name]))):
            continue
        try:
            value = coerce(raw, hints[name], spec.name, parse=spec.parse, secret=spec.secret)
        except SettingsError as exc:
            problems.extend(exc.problems)
            continue
        problem = _check_bounds(value, spec, spec.name)
        if problem:
            problems.append(problem)
            continue
        values[name] = value
    if problems:
        raise SettingsError(problems)
    return values


def read_mapping(cls: type, data: Mapping[str, Any], *, keys: Sequence[str] | None = None,
                 unknown: str = "ignore", label: Callable[[str], str] = str) -> dict[str, Any]:
    """Coerce a settings file's values (keys are field names) by the same rules as the environment.

    ``keys`` limits which fields a file may set (default: all); ``unknown`` is "ignore" or "error";
    ``label`` names a key in messages. None values are skipped (YAML ``key:`` with nothing = unset).
    """
    hints = _hints(cls)
    specs = {f.name: env_spec(f) for f in dataclasses.fields(cls)}
    allowed = set(keys) if keys is not None else set(specs)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in data.items():
        if key not in allowed:
            if unknown == "error":
                problems.append(Problem("unknown setting", repr(key)))
            continue
        if raw is None:
            continue
        spec = specs.get(key) or EnvSpec(name=key)
        try:
            value = coerce(raw, hints[key], label(key), parse=spec.parse, secret=spec.secret)
        except SettingsError as exc:
            problems.extend(exc.problems)
            continue
        problem = _check_bounds(value, spec, label(key))
        if problem:
            problems.append(problem)
            continue
        values[key] = value
    if problems:
        raise SettingsError(problems)
    return values


def load(cls: type[T], environ: Mapping[str, str], *, base: Mapping[str, Any] | None = None,
         blank_is_unset: bool = False) -> T:
    """An instance of ``cls``: defaults < ``base`` (e.g. a settings file's values) < ``environ``.

    A field without a default that neither source sets is reported as ``VARIABLE is required``, together
    with every malformed variable.
    """
    values = dict(base or {})
    problems: list[str] = []
    try:
        values.update(read_env(cls, environ, blank_is_unset=blank_is_unset))
    except SettingsError as exc:
        problems.extend(exc.problems)
    for f in dataclasses.fields(cls):
        if f.name in values or not f.init:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            spec = env_spec(f)
            problems.append(Problem(spec.name if spec else f.name, "is required"))
    if problems:
        raise SettingsError(problems)
    return cls(**values)
