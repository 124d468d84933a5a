"""Operator configuration from the environment, and kopf settings derived from it."""

from __future__ import annotations

import pathlib

import kopf
import pytest

from coursegrader_operator import constants as C
from coursegrader_operator.__main__ import kopf_args
from coursegrader_operator.config import OperatorConfig
from coursegrader_operator.handlers import OWNED_RESOURCES, apply_settings


def test_defaults_without_environment() -> None:
    config = OperatorConfig.from_env({})
    assert config.namespaces == ()
    assert config.scale_interval == 2.0
    assert config.watch_inactivity_timeout == 70.0
    assert not config.has_admin


def test_environment_is_parsed(tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    config = OperatorConfig.from_env({
        "XQOP_NAMESPACES": "a, b,,", "XQOP_ADMIN_USERNAME": "admin", "XQOP_ADMIN_PASSWORD_FILE": str(secret),
        "XQOP_SCALE_INTERVAL": "0.5", "XQOP_XQUEUE_URL": "http://xq:18040/", "XQOP_DNS_POD_LABELS": "a=b,c=d",
    })
    assert config.namespaces == ("a", "b")
    assert config.admin_password == "hunter2" and config.has_admin
    assert config.scale_interval == 0.5
    assert config.xqueue_url == "http://xq:18040"
    assert dict(config.dns_pod_labels) == {"a": "b", "c": "d"}


def test_secrets_never_appear_in_repr() -> None:
    config = OperatorConfig.from_env({"XQOP_ADMIN_PASSWORD": "hunter2", "XQOP_ADMIN_TOKEN": "tok-123"})
    assert "hunter2" not in repr(config) and "tok-123" not in repr(config)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="XQOP_SCALE_INTERVAL"):
        OperatorConfig.from_env({"XQOP_SCALE_INTERVAL": "-1"})
    with pytest.raises(ValueError, match="key=value"):
        OperatorConfig.from_env({"XQOP_DNS_POD_LABELS": "nonsense"})


def test_watch_settings_recover_from_silent_streams() -> None:
    settings = kopf.OperatorSettings()
    apply_settings(settings, OperatorConfig.from_env({"XQOP_WATCH_INACTIVITY_TIMEOUT": "15"}))
    assert settings.watching.inactivity_timeout == 15
    assert settings.watching.server_timeout is not None and settings.watching.client_timeout is not None
    assert settings.watching.client_timeout > settings.watching.server_timeout
    assert isinstance(settings.watching.server_timeout, int)  # sent as timeoutSeconds=<int>
    assert settings.watching.connect_timeout is not None
    assert settings.networking.request_timeout == 30
    for resource in OWNED_RESOURCES:
        assert settings.watching.label_selectors[resource] == C.MANAGED_SELECTOR


def test_console_script_runs_kopf_standalone() -> None:
    args = kopf_args(OperatorConfig(namespaces=("x", "y"), liveness="http://0.0.0.0:8081/healthz"))
    assert args[:4] == ["run", "--standalone", "-m", "coursegrader_operator.handlers"]
    assert args.count("--namespace") == 2 and "--all-namespaces" not in args
    assert "--liveness" in args
    assert "--all-namespaces" in kopf_args(OperatorConfig())
