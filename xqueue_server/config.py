"""Server configuration: one typed object, read from environment variables and an optional YAML file.

Precedence: defaults < YAML file (``XQUEUE_CONFIG_FILE``) < environment variables.
Every field is documented in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .client_address import parse_networks


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    # --- network and database
    database_url: str | None = None  # None: start a throwaway local PostgreSQL under local_state_dir
    host: str = "127.0.0.1"
    port: int = 18040
    public_url: str | None = None  # base URL graders use for file downloads; default: the request's origin
    local_state_dir: str = ".local"  # throwaway database and local files for the embedded default
    # The embedded PostgreSQL (no database_url): "durable" keeps PostgreSQL's crash safety; "fast" turns off
    # fsync, synchronous_commit and full_page_writes (tests, demos): a machine crash can lose acknowledged work.
    local_durability: str = "durable"
    db_pool_min: int = 2
    db_pool_max: int = 20

    # --- queue semantics
    lease_seconds: float = 60.0  # how long a pulled submission stays invisible to other graders
    max_pulls: int = 5  # pulls without a result before a submission is retired as poison
    long_poll_max_seconds: float = 30.0  # cap for get_submission?wait=
    bulk_max: int = 50  # cap for get_submission?max= and bulk put_result

    # --- callback delivery (outbox)
    callback_timeout_seconds: float = 10.0
    callback_horizon_seconds: float = 24 * 3600.0  # keep retrying this long, then dead-letter
    callback_backoff_base_seconds: float = 1.0
    callback_backoff_max_seconds: float = 600.0
    callback_concurrency: int = 32
    # Fairness: one LMS that hangs may hold at most this many of the slots above (per process).
    callback_per_host_concurrency: int = 4
    # A host that does not answer the TCP handshake fails fast; callback_timeout_seconds bounds the rest.
    callback_connect_timeout_seconds: float = 3.0
    callback_verify_tls: bool = True
    callback_basic_auth: str | None = None  # "user:password" sent to the LMS (upstream REQUESTS_BASIC_AUTH)

    # --- limits
    max_file_bytes: int = 4_000_000  # the LMS's own STUDENT_FILEUPLOAD_MAX_SIZE
    max_request_bytes: int = 20_000_000
    max_files: int = 20
    max_header_bytes: int = 64_000  # xqueue_header
    max_body_bytes: int = 2_500_000  # xqueue_body (Django's DATA_UPLOAD_MAX_MEMORY_SIZE)

    # --- files
    storage: str = "local"  # "local" or "s3"
    storage_dir: str | None = None  # local storage folder; default <local_state_dir>/files
    file_url_ttl_seconds: int = 3600
    s3_bucket: str | None = None
    s3_prefix: str = "xqueue"
    s3_endpoint_url: str | None = None  # for S3-compatible services (MinIO, moto, Ceph)
    s3_region: str | None = None

    # --- accounts and queues
    queues: tuple[str, ...] = ()  # seeded at start-up (like upstream XQUEUES)
    users_file: str | None = None  # YAML {username: password} imported at start-up (like update_users)
    session_max_age_seconds: int = 14 * 24 * 3600  # Django's default session age
    session_cookie_secure: bool = False

    # --- abuse resistance (policy in ratelimit.py, client_address.py)
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Real-IP / X-Forwarded-For are believed
    login_failure_window_seconds: float = 60.0
    login_max_failures_per_account_address: int = 5
    login_max_failures_per_address: int = 20
    login_max_failures_per_account: int = 100  # not applied to addresses the account logged in from
    header_timeout_seconds: float = 20.0  # request line + headers must arrive within this; also keep-alive idle
    body_timeout_seconds: float = 60.0  # a request body must arrive completely within this

    # --- housekeeping
    retention_days: float = 30.0  # finished submissions (and their files) are deleted after this
    sweep_interval_seconds: float = 1.0  # poison retirement, metrics refresh
    housekeeping_interval_seconds: float = 300.0  # retention, expired sessions

    # --- logging
    log_level: str = "INFO"
    log_format: str = "json"  # "json" or "text"

    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved_storage_dir(self) -> Path:
        return Path(self.storage_dir or Path(self.local_state_dir) / "files")


# Environment variable -> field name. Every variable starts with XQUEUE_.
ENV_PREFIX = "XQUEUE_"


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(Settings) if f.name != "extra"}


def _coerce(name: str, type_name: str, raw: Any) -> Any:
    """Turn a YAML or environment value into the field's type, with a clear error."""
    if raw is None:
        return None
    try:
        if "tuple" in type_name:
            if isinstance(raw, str):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
            return tuple(str(item) for item in raw)
        if type_name.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if isinstance(raw, str) and raw == "" and "None" in type_name:
            return None
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {exc}") from None


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the YAML file named by XQUEUE_CONFIG_FILE, the environment, overrides."""
    env = os.environ if env is None else env
    types = _field_types()
    values: dict[str, Any] = {}

    config_file = env.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping")
        for key, raw in loaded.items():
            if key not in types:
                raise ConfigError(f"unknown setting {key!r} in {config_file}")
            values[key] = _coerce(key, str(types[key]), raw)

    for name, type_name in types.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(ENV_PREFIX + name.upper(), str(type_name), raw)

    values.update(overrides)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    if settings.storage not in ("local", "s3"):
        raise ConfigError("XQUEUE_STORAGE must be 'local' or 's3'")
    if settings.storage == "s3" and not settings.s3_bucket:
        raise ConfigError("XQUEUE_S3_BUCKET is required when XQUEUE_STORAGE=s3")
    if settings.lease_seconds <= 0:
        raise ConfigError("XQUEUE_LEASE_SECONDS must be positive")
    if settings.max_pulls < 1:
        raise ConfigError("XQUEUE_MAX_PULLS must be at least 1")
    if settings.callback_per_host_concurrency < 1:
        raise ConfigError("XQUEUE_CALLBACK_PER_HOST_CONCURRENCY must be at least 1")
    if settings.callback_connect_timeout_seconds <= 0:
        raise ConfigError("XQUEUE_CALLBACK_CONNECT_TIMEOUT_SECONDS must be positive")
    if settings.local_durability not in ("durable", "fast"):
        raise ConfigError("XQUEUE_LOCAL_DURABILITY must be 'durable' or 'fast'")
    if settings.log_format not in ("json", "text"):
        raise ConfigError("XQUEUE_LOG_FORMAT must be 'json' or 'text'")
    try:
        parse_networks(settings.trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"XQUEUE_TRUSTED_PROXIES: {exc}") from None
    for name in ("login_failure_window_seconds", "login_max_failures_per_account_address",
                 "login_max_failures_per_address", "login_max_failures_per_account",
                 "header_timeout_seconds", "body_timeout_seconds"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"XQUEUE_{name.upper()} must be positive")
