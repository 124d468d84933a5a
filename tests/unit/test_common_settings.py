"""xqueue_common.settings: one coercion for every package, errors named by variable, secrets unquoted."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import pytest

from xqueue_common.settings import (
    SettingsError,
    coerce,
    env,
    load,
    parse_bool,
    parse_duration,
    parse_list,
    read_env,
    read_mapping,
    variables,
)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Sample:
    name: str = env("T_NAME")
    flag: bool = env("T_FLAG", default=False)
    count: int = env("T_COUNT", default=3, min=1, max=10)
    ratio: float = env("T_RATIO", default=0.5)
    wait: float = env("T_WAIT", default=30.0, parse=parse_duration)
    hosts: tuple[str, ...] = env("T_HOSTS", default=())
    url: str | None = env("T_URL", default=None)
    fmt: Literal["json", "text"] = env("T_FMT", default="json")
    color: Color = env("T_COLOR", default=Color.RED)
    token: str = env("T_TOKEN", default="", secret=True)
    not_from_env: int = 7


@pytest.mark.parametrize("word", ["1", "true", "TRUE", " yes ", "On", "True"])
def test_true_words(word: str) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", ["0", "false", "False", "no", "NO", "off", " off "])
def test_false_words(word: str) -> None:
    assert parse_bool(word) is False


@pytest.mark.parametrize("word", ["", "2", "y", "enabled", "truthy", "nope"])
def test_other_words_are_not_booleans(word: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(word)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("30s", 30.0), ("1.5", 1.5), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25),
    (" 2 s ", 2.0), ("0", 0.0), ("1e3ms", 1.0),
])
def test_durations_are_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 minutes", "1h30m", "inf", "nan", "5d", "--1"])
def test_malformed_durations_are_errors(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_lists_are_comma_separated_stripped_without_empties() -> None:
    assert parse_list(" a, b ,,c ,") == ("a", "b", "c")
    assert parse_list("") == ()


def test_load_reads_every_declared_variable() -> None:
    settings = load(Sample, {
        "T_NAME": "x", "T_FLAG": "yes", "T_COUNT": "4", "T_RATIO": "0.25", "T_WAIT": "5m",
        "T_HOSTS": "a,b", "T_URL": "http://h", "T_FMT": "text", "T_COLOR": "blue", "T_TOKEN": "t0k",
        "NOT_FROM_ENV": "99",
    })
    assert settings == Sample(name="x", flag=True, count=4, ratio=0.25, wait=300.0, hosts=("a", "b"),
                              url="http://h", fmt="text", color=Color.BLUE, token="t0k")
    assert settings.not_from_env == 7


def test_defaults_apply_and_base_sits_between_defaults_and_environment() -> None:
    assert load(Sample, {"T_NAME": "n"}) == Sample(name="n")
    settings = load(Sample, {"T_COUNT": "5"}, base={"name": "from-file", "count": 2, "ratio": 0.75})
    assert (settings.name, settings.count, settings.ratio) == ("from-file", 5, 0.75)


def test_empty_values() -> None:
    # An empty Optional is None, empty text is "", an empty list is (); a blank number, boolean or choice
    # keeps its default (it has no blank value); blank_is_unset makes every blank variable unset.
    settings = load(Sample, {"T_NAME": "", "T_URL": "", "T_HOSTS": "", "T_COUNT": "", "T_FLAG": " ",
                             "T_FMT": "", "T_COLOR": "", "T_WAIT": ""})
    assert (settings.name, settings.url, settings.hosts) == ("", None, ())
    assert (settings.count, settings.flag, settings.fmt, settings.color, settings.wait) == (
        3, False, "json", Color.RED, 30.0)
    with pytest.raises(SettingsError, match="T_NAME is required"):
        load(Sample, {"T_NAME": " "}, blank_is_unset=True)


def test_every_problem_is_reported_together_by_variable_name() -> None:
    with pytest.raises(SettingsError) as info:
        load(Sample, {"T_FLAG": "maybe", "T_COUNT": "many", "T_RATIO": "nan", "T_WAIT": "soon",
                      "T_FMT": "xml", "T_COLOR": "green"})
    problems = info.value.problems
    assert len(problems) == 7, problems
    text = str(info.value)
    for fragment in ("T_NAME is required",
                     "T_FLAG is not a boolean: use 1/0, true/false, yes/no or on/off (got 'maybe')",
                     "T_COUNT must be a number", "T_RATIO must be a number", "T_WAIT must be a duration",
                     "T_FMT must be one of json, text", "T_COLOR must be one of red, blue"):
        assert fragment in text


def test_bounds_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="T_COUNT must be at least 1"):
        load(Sample, {"T_NAME": "n", "T_COUNT": "0"})
    with pytest.raises(SettingsError, match="T_COUNT must be at most 10"):
        load(Sample, {"T_NAME": "n", "T_COUNT": "11"})


def test_secret_values_never_appear_in_errors_or_repr() -> None:
    @dataclass(frozen=True)
    class Secretive:
        pin: int = env("T_PIN", default=0, secret=True)
        password: str = env("T_PASSWORD", default="", secret=True)

    with pytest.raises(SettingsError) as info:
        load(Secretive, {"T_PIN": "hunter2"})
    assert "T_PIN" in str(info.value) and "hunter2" not in str(info.value)
    assert "sw0rdf1sh" not in repr(load(Secretive, {"T_PASSWORD": "sw0rdf1sh"}))


def test_integers_reject_fractions_and_booleans() -> None:
    assert coerce(5.0, int, "n") == 5
    assert coerce(" 12 ", int, "n") == 12
    for bad in (5.5, True, "1.5", "x", None):
        with pytest.raises(SettingsError, match="n must be a number"):
            coerce(bad, int, "n")
    with pytest.raises(SettingsError):
        coerce(False, float, "f")
    assert coerce(2, float, "f") == 2.0


def test_yaml_values_coerce_like_the_environment() -> None:
    values = read_mapping(Sample, {"flag": True, "count": 2, "hosts": ["a", "b"], "wait": "1m", "ratio": 1,
                                   "url": None, "other": "ignored"})
    assert values == {"flag": True, "count": 2, "hosts": ("a", "b"), "wait": 60.0, "ratio": 1.0}
    with pytest.raises(SettingsError, match="unknown setting 'other'"):
        read_mapping(Sample, {"other": 1}, unknown="error")
    with pytest.raises(SettingsError, match=r"file\.count must be at most 10"):
        read_mapping(Sample, {"count": 50}, label=lambda key: f"file.{key}")
    with pytest.raises(SettingsError, match="flag is not a boolean"):
        read_mapping(Sample, {"flag": "sometimes"})


def test_read_env_returns_only_what_is_set() -> None:
    assert read_env(Sample, {"T_COUNT": "9", "UNRELATED": "x"}) == {"count": 9}


def test_variables_lists_the_declarations_in_order() -> None:
    names = [spec.name for _, spec in variables(Sample)]
    assert names[:3] == ["T_NAME", "T_FLAG", "T_COUNT"] and "NOT_FROM_ENV" not in names
    assert [field for field, spec in variables(Sample) if spec.secret] == ["token"]
