"""xqueue_common.jsonlog: one JSON log shape (ts, level, logger, msg, fields, exc), no exception messages."""

from __future__ import annotations

import io
import json
import logging
import re

from xqueue_common.jsonlog import JsonFormatter, TextFormatter, setup_logging


def _record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("xq.test", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_entry_has_the_four_keys_then_fields() -> None:
    entry = json.loads(JsonFormatter().format(_record(fields={"queue": "q1", "n": 3})))
    assert list(entry)[:4] == ["ts", "level", "logger", "msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert (entry["level"], entry["logger"], entry["msg"]) == ("warning", "xq.test", "hello world")
    assert (entry["queue"], entry["n"]) == ("q1", 3)


def test_fields_never_replace_the_base_keys() -> None:
    entry = json.loads(JsonFormatter().format(_record(fields={"msg": "forged", "level": "debug", "x": 1})))
    assert (entry["msg"], entry["level"], entry["x"]) == ("hello world", "warning", 1)


def test_exceptions_are_logged_by_class_and_frames_never_by_message() -> None:
    # Built at run time: the traceback quotes the raising source lines, which must not hold the secrets.
    password, token = "".join(["hun", "ter2"]), "".join(["abc", "123"])

    def fail() -> None:
        try:
            raise KeyError(password)
        except KeyError as exc:
            raise RuntimeError(token) from exc

    try:
        fail()
    except RuntimeError:
        import sys
        record = logging.LogRecord("xq.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    for line in (JsonFormatter().format(record), TextFormatter("%(message)s").format(record)):
        assert "hunter2" not in line and "abc123" not in line
        assert "builtins.KeyError" in line and "builtins.RuntimeError" in line
    entry = json.loads(JsonFormatter().format(record))
    assert "Traceback (most recent call last)" in entry["exc"] and "which led to" in entry["exc"]


def test_exception_field_values_are_described_by_class() -> None:
    entry = json.loads(JsonFormatter().format(_record(fields={"error": ValueError("secret-value")})))
    assert entry["error"] == "builtins.ValueError"


def test_setup_logging_writes_one_json_line_per_record(monkeypatch: object) -> None:
    import sys

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("debug", "json")
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("xq.setup").info("ready", extra={"fields": {"port": 1}})
        setup_logging("INFO", "text")
        assert isinstance(root.handlers[0].formatter, TextFormatter)
        assert logging.getLogger("aiohttp.access").level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["msg"] == "ready" and json.loads(line)["port"] == 1
    assert sys.stderr is not None
