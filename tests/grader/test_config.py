"""The grader's configuration: defaults, environment over file over defaults, errors by name."""

from __future__ import annotations

import json

import pytest

from xqueue_grader.config import ConfigError, HandlerSpec, config_from_sources
from xqueue_grader.sandbox import Limits


def test_config_defaults_follow_the_contract() -> None:
    config = config_from_sources({"XQGRADER_QUEUE": "q1"})
    assert config.server_url == "http://127.0.0.1:18040"
    assert config.grader_root == "/grader/course"
    assert config.slots == 2
    assert config.http_port == 8080
    assert config.drain_seconds == 60
    assert config.username is None and config.password is None
    # anchors.md 6.6 defaults
    assert config.limits == Limits(cpu_seconds=5, wall_seconds=10, memory_mb=256, processes=64,
                                   file_size_kb=1024, output_kb=64, open_files=64)


def test_config_reads_every_contract_variable() -> None:
    env = {
        "XQGRADER_SERVER_URL": "https://xq.example:8443", "XQGRADER_QUEUE": "course-x",
        "XQGRADER_USERNAME": "grader", "XQGRADER_PASSWORD": "s3cret", "XQGRADER_GRADER_ROOT": "/g",
        "XQGRADER_SLOTS": "4", "XQGRADER_HTTP_PORT": "9090", "XQGRADER_DRAIN_SECONDS": "15",
        "XQGRADER_LIMIT_CPU_SECONDS": "2", "XQGRADER_LIMIT_WALL_SECONDS": "4",
        "XQGRADER_LIMIT_MEMORY_MB": "128", "XQGRADER_LIMIT_PROCESSES": "16",
        "XQGRADER_LIMIT_FILE_SIZE_KB": "512", "XQGRADER_LIMIT_OUTPUT_KB": "32",
        "XQGRADER_LIMIT_OPEN_FILES": "40",
    }
    config = config_from_sources(env)
    assert (config.server_url, config.queue, config.username, config.password) == (
        "https://xq.example:8443", "course-x", "grader", "s3cret")
    assert (config.grader_root, config.slots, config.http_port, config.drain_seconds) == ("/g", 4, 9090, 15)
    assert config.limits.cpu_seconds == 2 and config.limits.wall_seconds == 4
    assert config.limits.memory_mb == 128 and config.limits.processes == 16
    assert config.limits.file_size_kb == 512 and config.limits.output_kb == 32 and config.limits.open_files == 40


def test_environment_overrides_file_and_file_overrides_defaults() -> None:
    file_data = {"queue": "from-file", "slots": 3, "limits": {"wall_seconds": 7, "disk_kb": 999},
                 "handlers": [{"HANDLER": "pkg.mod.Handler", "KWARGS": {"a": 1}}, "pkg.other:fn"]}
    config = config_from_sources({"XQGRADER_SLOTS": "5"}, file_data)
    assert config.queue == "from-file"
    assert config.slots == 5
    assert config.limits.wall_seconds == 7 and config.limits.disk_kb == 999
    assert config.handlers == (HandlerSpec("pkg.mod.Handler", {"a": 1}), HandlerSpec("pkg.other:fn"))


def test_password_file_text_is_used_without_trailing_newline() -> None:
    config = config_from_sources({"XQGRADER_QUEUE": "q"}, None, "from-file\n")
    assert config.password == "from-file"


@pytest.mark.parametrize(("env", "fragment"), [
    ({}, "XQGRADER_QUEUE is required"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SLOTS": "many"}, "XQGRADER_SLOTS must be a number"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SLOTS": "0"}, "slots must be at least 1"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SERVER_URL": "ftp://x"}, "server_url"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_SERVER_URL": "http://x/"}, "must not end with '/'"),
    ({"XQGRADER_QUEUE": "q", "XQGRADER_LIMIT_WALL_SECONDS": "-1"}, "wall_seconds"),
])
def test_bad_configuration_is_reported_by_name(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_sources(env)
    assert fragment in str(info.value)


def test_config_never_shows_the_password() -> None:
    config = config_from_sources({"XQGRADER_QUEUE": "q", "XQGRADER_PASSWORD": "hunter2"})
    assert "hunter2" not in repr(config)
    assert "hunter2" not in json.dumps(config.public_summary())
