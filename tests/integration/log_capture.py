"""Capturing what the server logs, formatted as production writes it (JSON lines), for log assertions."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from xqueue_server.logs import JsonFormatter


class CapturedLogs(logging.Handler):
    """Every record the process logs, kept, plus its formatted JSON line (what production writes)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.formatter_ = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.formatter_.format(record))

    def messages(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == text]


@pytest.fixture
def captured_logs() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
