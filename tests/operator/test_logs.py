"""With kopf's JSON log format, the operator's log takes the shape the server and the grader write."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest

from coursegrader_operator.__main__ import LOG_FORMATS
from coursegrader_operator.logs import use_shared_json_shape


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield root
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_kopf_json_logs_take_the_shared_shape(root_logging: logging.Logger) -> None:
    kopf.configure(log_format=kopf.LogFormat.JSON)
    kopf_handlers = [h for h in root_logging.handlers if h.formatter is not None
                     and type(h.formatter).__name__ == "ObjectJsonFormatter"]
    assert len(kopf_handlers) == 1, "kopf.configure no longer installs its JSON formatter: revisit logs.py"
    stream = io.StringIO()
    kopf_handlers[0].setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("kopf.objects")
    ref = {"apiVersion": "grading.xqueue-k8s.io/v1", "kind": "CourseGrader", "name": "c1", "namespace": "ns"}
    log.warning("before", extra={"k8s_ref": ref})

    assert use_shared_json_shape() == 1
    log.warning("after %s", "swap", extra={"k8s_ref": ref})
    try:
        raise RuntimeError("not-" + "logged")
    except RuntimeError:
        logging.getLogger("coursegrader_operator.test").exception("failed")

    before, after, failed = (json.loads(line) for line in stream.getvalue().splitlines())
    assert before["message"] == "before"  # kopf's own keys until the swap
    assert list(after)[:4] == ["ts", "level", "logger", "msg"]
    assert (after["level"], after["logger"], after["msg"]) == ("warning", "kopf.objects", "after swap")
    assert after["object"] == ref and "message" not in after and "severity" not in after
    assert failed["msg"] == "failed" and "builtins.RuntimeError" in failed["exc"]
    assert "not-logged" not in json.dumps(failed)


def test_other_formats_are_left_alone(root_logging: logging.Logger) -> None:
    kopf.configure(log_format=kopf.LogFormat.PLAIN)
    assert use_shared_json_shape() == 0


def test_every_log_format_the_chart_allows_is_one_the_operator_accepts() -> None:
    schema = json.loads((Path(__file__).resolve().parents[2] / "charts/xqueue/values.schema.json").read_text())
    allowed = schema["properties"]["operator"]["properties"]["logFormat"]["enum"]
    assert set(allowed) == set(LOG_FORMATS)
