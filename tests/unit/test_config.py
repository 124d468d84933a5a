"""Settings (config.py): environment over file, and clear errors for bad values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xqueue_server.config import ConfigError, load_settings


def test_settings_from_env_and_yaml(tmp_path: Path) -> None:
    config = tmp_path / "xqueue.yaml"
    config.write_text("lease_seconds: 30\nqueues: [a, b]\ncallback_verify_tls: false\n")
    settings = load_settings(env={"XQUEUE_CONFIG_FILE": str(config), "XQUEUE_MAX_PULLS": "7",
                                  "XQUEUE_LEASE_SECONDS": "45"})
    assert settings.lease_seconds == 45.0  # environment beats the file
    assert settings.max_pulls == 7
    assert settings.queues == ("a", "b")
    assert settings.callback_verify_tls is False


@pytest.mark.parametrize(("env", "message"), [
    ({"XQUEUE_MAX_PULLS": "many"}, "invalid value for XQUEUE_MAX_PULLS"),
    ({"XQUEUE_STORAGE": "ftp"}, "XQUEUE_STORAGE must be"),
    ({"XQUEUE_STORAGE": "s3"}, "XQUEUE_S3_BUCKET is required"),
    ({"XQUEUE_CALLBACK_VERIFY_TLS": "maybe"}, "not a boolean"),
])
def test_bad_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_yaml_setting_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("leese_seconds: 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'leese_seconds'"):
        load_settings(env={"XQUEUE_CONFIG_FILE": str(config)})


def test_trusted_proxies_setting_is_validated() -> None:
    settings = load_settings(env={"XQUEUE_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1"})
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    bad = re.escape("XQUEUE_TRUSTED_PROXIES: not an IP address or CIDR: 'example.com'")
    with pytest.raises(ConfigError, match=bad):
        load_settings(env={"XQUEUE_TRUSTED_PROXIES": "10.0.0.0/8,example.com"})
    with pytest.raises(ConfigError, match="XQUEUE_BODY_TIMEOUT_SECONDS must be positive"):
        load_settings(env={"XQUEUE_BODY_TIMEOUT_SECONDS": "0"})
