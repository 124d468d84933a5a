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

from xqueue_common.settings import Problem, SettingsError, env, parse_duration, read_env, read_mapping

from .client_address import parse_networks


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    # --- network and database
    # None: start a throwaway local PostgreSQL under local_state_dir
    database_url: str | None = env("XQUEUE_DATABASE_URL", default=None, secret=True)
    host: str = env("XQUEUE_HOST", default="127.0.0.1")
    port: int = env("XQUEUE_PORT", default=18040)
    # base URL graders use for file downloads; default: the request's origin
    public_url: str | None = env("XQUEUE_PUBLIC_URL", default=None)
    # throwaway database and local files for the embedded default
    local_state_dir: str = env("XQUEUE_LOCAL_STATE_DIR", default=".local")
    # The embedded PostgreSQL (no database_url): "durable" keeps PostgreSQL's crash safety; "fast" turns off
    # fsync, synchronous_commit and full_page_writes (tests, demos): a machine crash can lose acknowledged work.
    local_durability: str = env("XQUEUE_LOCAL_DURABILITY", default="durable")
    db_pool_min: int = env("XQUEUE_DB_POOL_MIN", default=2)
    db_pool_max: int = env("XQUEUE_DB_POOL_MAX", default=20)

    # --- queue semantics
    # how long a pulled submission stays invisible to other graders
    lease_seconds: float = env("XQUEUE_LEASE_SECONDS", default=60.0, parse=parse_duration)
    # pulls without a result before a submission is retired as poison
    max_pulls: int = env("XQUEUE_MAX_PULLS", default=5)
    # cap for get_submission?wait=
    long_poll_max_seconds: float = env(
        "XQUEUE_LONG_POLL_MAX_SECONDS", default=30.0, parse=parse_duration)
    bulk_max: int = env("XQUEUE_BULK_MAX", default=50)  # cap for get_submission?max= and bulk put_result
    # a long-polling grader looks again at least this often even without a wake-up (expired leases are
    # not announced)
    long_poll_recheck_seconds: float = env(
        "XQUEUE_LONG_POLL_RECHECK_SECONDS", default=2.0, parse=parse_duration, min=0.05)

    # --- callback delivery (outbox)
    callback_timeout_seconds: float = env("XQUEUE_CALLBACK_TIMEOUT_SECONDS", default=10.0, parse=parse_duration)
    # keep retrying this long, then dead-letter
    callback_horizon_seconds: float = env("XQUEUE_CALLBACK_HORIZON_SECONDS", default=24 * 3600.0, parse=parse_duration)
    callback_backoff_base_seconds: float = env(
        "XQUEUE_CALLBACK_BACKOFF_BASE_SECONDS", default=1.0, parse=parse_duration)
    callback_backoff_max_seconds: float = env(
        "XQUEUE_CALLBACK_BACKOFF_MAX_SECONDS", default=600.0, parse=parse_duration)
    callback_concurrency: int = env("XQUEUE_CALLBACK_CONCURRENCY", default=32)
    # Fairness: one LMS that hangs may hold at most this many of the slots above (per process).
    callback_per_host_concurrency: int = env("XQUEUE_CALLBACK_PER_HOST_CONCURRENCY", default=4)
    # A host that does not answer the TCP handshake fails fast; callback_timeout_seconds bounds the rest.
    callback_connect_timeout_seconds: float = env(
        "XQUEUE_CALLBACK_CONNECT_TIMEOUT_SECONDS", default=3.0, parse=parse_duration)
    callback_verify_tls: bool = env("XQUEUE_CALLBACK_VERIFY_TLS", default=True)
    # "user:password" sent to the LMS (upstream REQUESTS_BASIC_AUTH)
    callback_basic_auth: str | None = env("XQUEUE_CALLBACK_BASIC_AUTH", default=None, secret=True)

    # --- limits
    max_file_bytes: int = env("XQUEUE_MAX_FILE_BYTES", default=4_000_000)  # the LMS's own STUDENT_FILEUPLOAD_MAX_SIZE
    max_request_bytes: int = env("XQUEUE_MAX_REQUEST_BYTES", default=20_000_000)
    max_files: int = env("XQUEUE_MAX_FILES", default=20)
    max_header_bytes: int = env("XQUEUE_MAX_HEADER_BYTES", default=64_000)  # xqueue_header
    # xqueue_body (Django's DATA_UPLOAD_MAX_MEMORY_SIZE)
    max_body_bytes: int = env("XQUEUE_MAX_BODY_BYTES", default=2_500_000)

    # --- files
    storage: str = env("XQUEUE_STORAGE", default="local")  # "local" or "s3"
    # local storage folder; default <local_state_dir>/files
    storage_dir: str | None = env("XQUEUE_STORAGE_DIR", default=None)
    file_url_ttl_seconds: int = env("XQUEUE_FILE_URL_TTL_SECONDS", default=3600)
    s3_bucket: str | None = env("XQUEUE_S3_BUCKET", default=None)
    s3_prefix: str = env("XQUEUE_S3_PREFIX", default="xqueue")
    # for S3-compatible services (MinIO, moto, Ceph)
    s3_endpoint_url: str | None = env("XQUEUE_S3_ENDPOINT_URL", default=None)
    s3_region: str | None = env("XQUEUE_S3_REGION", default=None)

    # --- accounts and queues
    queues: tuple[str, ...] = env("XQUEUE_QUEUES", default=())  # seeded at start-up (like upstream XQUEUES)
    # YAML {username: password} imported at start-up (like update_users)
    users_file: str | None = env("XQUEUE_USERS_FILE", default=None)
    # Django's default session age
    session_max_age_seconds: int = env("XQUEUE_SESSION_MAX_AGE_SECONDS", default=14 * 24 * 3600)
    session_cookie_secure: bool = env("XQUEUE_SESSION_COOKIE_SECURE", default=False)

    # --- abuse resistance (policy in ratelimit.py, client_address.py)
    # CIDRs whose X-Real-IP / X-Forwarded-For are believed
    trusted_proxies: tuple[str, ...] = env("XQUEUE_TRUSTED_PROXIES", default=())
    login_failure_window_seconds: float = env("XQUEUE_LOGIN_FAILURE_WINDOW_SECONDS", default=60.0, parse=parse_duration)
    login_max_failures_per_account_address: int = env("XQUEUE_LOGIN_MAX_FAILURES_PER_ACCOUNT_ADDRESS", default=5)
    login_max_failures_per_address: int = env("XQUEUE_LOGIN_MAX_FAILURES_PER_ADDRESS", default=20)
    # not applied to addresses the account logged in from
    login_max_failures_per_account: int = env("XQUEUE_LOGIN_MAX_FAILURES_PER_ACCOUNT", default=100)
    # request line + headers must arrive within this; also keep-alive idle
    header_timeout_seconds: float = env("XQUEUE_HEADER_TIMEOUT_SECONDS", default=20.0, parse=parse_duration)
    # a request body must arrive completely within this
    body_timeout_seconds: float = env("XQUEUE_BODY_TIMEOUT_SECONDS", default=60.0, parse=parse_duration)

    # --- housekeeping
    # finished submissions (and their files) are deleted after this
    retention_days: float = env("XQUEUE_RETENTION_DAYS", default=30.0)
    # poison retirement, metrics refresh
    sweep_interval_seconds: float = env("XQUEUE_SWEEP_INTERVAL_SECONDS", default=1.0, parse=parse_duration)
    # retention, expired sessions
    housekeeping_interval_seconds: float = env(
        "XQUEUE_HOUSEKEEPING_INTERVAL_SECONDS", default=300.0, parse=parse_duration)

    # --- logging
    log_level: str = env("XQUEUE_LOG_LEVEL", default="INFO")
    log_format: str = env("XQUEUE_LOG_FORMAT", default="json")  # "json" or "text"

    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resolved_storage_dir(self) -> Path:
        return Path(self.storage_dir or Path(self.local_state_dir) / "files")


ENV_PREFIX = "XQUEUE_"


def _config_error(exc: SettingsError) -> ConfigError:
    """The shared coercion's problems, phrased as this server always phrased them."""
    parts = [f"invalid value for {p.name}: {p.reason}" if isinstance(p, Problem) and p.name.startswith(ENV_PREFIX)
             else str(p) for p in exc.problems]
    return ConfigError("; ".join(parts))


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the YAML file named by XQUEUE_CONFIG_FILE, the environment, overrides.

    Values are coerced by xqueue_common.settings (the same rules as the grader and the operator); each
    field names its variable (``XQUEUE_`` + the field name in capitals).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}

    config_file = env.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file:
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping")
        file_fields = [f.name for f in dataclasses.fields(Settings) if f.name != "extra"]
        try:
            values.update(read_mapping(Settings, loaded, keys=file_fields, unknown="error"))
        except SettingsError as exc:
            raise ConfigError("; ".join(f"{p} in {config_file}" for p in exc.problems)) from None

    try:
        values.update(read_env(Settings, env))
    except SettingsError as exc:
        raise _config_error(exc) from None

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
