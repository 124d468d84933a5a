"""Grader configuration: one typed object read from environment variables and an optional YAML file.

Precedence: built-in defaults < YAML file (``XQGRADER_CONFIG_FILE``) < environment variables.
The environment variables are the contract in docs/contracts.md; the YAML file accepts the same
settings (lower-case names without the ``XQGRADER_`` prefix, limits under ``limits:``) plus a few
advanced ones that have no variable (handlers, polling rhythm, sandbox options).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from xqueue_common.settings import SettingsError, env, load, parse_duration, read_env, read_mapping
from xqueue_grader.sandbox.limits import Limits

ENV_PREFIX = "XQGRADER_"


class ConfigError(SettingsError):
    """A setting is missing or malformed; the message names the setting, never a secret's value."""


@dataclass(frozen=True)
class HandlerSpec:
    """A course-supplied handler, as in xqueue-watcher's ``HANDLERS`` list."""

    path: str  # "package.module.attr" or "package.module:attr"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraderConfig:
    # -- the environment contract (docs/contracts.md); the YAML file may set these too -------------
    queue: str = env(ENV_PREFIX + "QUEUE")
    server_url: str = env(ENV_PREFIX + "SERVER_URL", default="http://127.0.0.1:18040")
    username: str | None = env(ENV_PREFIX + "USERNAME", default=None)
    password: str | None = env(ENV_PREFIX + "PASSWORD", default=None, secret=True)
    grader_root: str = env(ENV_PREFIX + "GRADER_ROOT", default="/grader/course")
    slots: int = env(ENV_PREFIX + "SLOTS", default=2)
    http_port: int = env(ENV_PREFIX + "HTTP_PORT", default=8080)
    drain_seconds: float = env(ENV_PREFIX + "DRAIN_SECONDS", default=60.0, parse=parse_duration)
    limits: Limits = field(default_factory=Limits)  # XQGRADER_LIMIT_* (LimitVariables) and limits: in the file
    # -- YAML-only settings --------------------------------------------------------------------
    http_host: str = "0.0.0.0"
    # Long-poll wait sent to servers that support it; 0 disables long-polling.
    long_poll_seconds: float = 20.0
    # Classic polling rhythm: immediately again after work, otherwise sleep from min to max.
    poll_min_seconds: float = 0.5
    poll_max_seconds: float = 4.0
    login_retry_seconds: float = 5.0
    requests_timeout: float = 10.0
    http_basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    verify_tls: bool = True
    put_result_attempts: int = 3
    submission_size_limit_kb: int = 1024
    handlers: tuple[HandlerSpec, ...] = ()
    sandbox_uid: int = 65534
    scratch_dir: str | None = None
    preload_modules: tuple[str, ...] = ()
    require_seccomp: bool = False
    require_landlock: bool = False
    # Liveness: a sandbox that has not worked for this long (while the daemon kept trying) asks
    # for a restart.  The self-test runs when no run has proven the sandbox for this long.
    liveness_grace_seconds: float = 60.0
    self_test_seconds: float = 30.0
    log_level: str = "INFO"

    def public_summary(self) -> dict[str, Any]:
        """Settings safe to log (no password, no basic-auth credentials)."""
        return {
            "queue": self.queue,
            "server_url": self.server_url,
            "username": self.username,
            "grader_root": self.grader_root,
            "slots": self.slots,
            "http_port": self.http_port,
            "drain_seconds": self.drain_seconds,
            "limits": self.limits.to_dict(),
            "long_poll_seconds": self.long_poll_seconds,
            "handlers": [h.path for h in self.handlers],
        }


@dataclass(frozen=True)
class LimitVariables:
    """The sandbox limits the environment may set (None: not set, the limit keeps its default).

    The YAML file's ``limits:`` mapping may set every field of Limits (``disk_kb`` too).
    """

    cpu_seconds: float | None = env(ENV_PREFIX + "LIMIT_CPU_SECONDS", default=None, parse=parse_duration)
    wall_seconds: float | None = env(ENV_PREFIX + "LIMIT_WALL_SECONDS", default=None, parse=parse_duration)
    memory_mb: int | None = env(ENV_PREFIX + "LIMIT_MEMORY_MB", default=None)
    processes: int | None = env(ENV_PREFIX + "LIMIT_PROCESSES", default=None)
    file_size_kb: int | None = env(ENV_PREFIX + "LIMIT_FILE_SIZE_KB", default=None)
    output_kb: int | None = env(ENV_PREFIX + "LIMIT_OUTPUT_KB", default=None)
    open_files: int | None = env(ENV_PREFIX + "LIMIT_OPEN_FILES", default=None)


# The YAML file's scalar settings (the rest: limits, handlers, preload_modules, http_basic_auth).
_FILE_SCALARS = (
    "server_url", "queue", "username", "password", "grader_root", "slots", "http_port", "drain_seconds",
    "http_host", "long_poll_seconds", "poll_min_seconds", "poll_max_seconds", "login_retry_seconds",
    "requests_timeout", "verify_tls", "put_result_attempts", "submission_size_limit_kb", "sandbox_uid",
    "scratch_dir", "require_seccomp", "require_landlock", "log_level", "liveness_grace_seconds",
    "self_test_seconds",
)


def _handler_specs(raw: Any) -> tuple[HandlerSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("handlers must be a list")
    specs = []
    for item in raw:
        if isinstance(item, str):
            specs.append(HandlerSpec(item))
            continue
        if not isinstance(item, dict):
            raise ConfigError("each handler must be a string or a mapping")
        # Accept xqueue-watcher's spelling (HANDLER/KWARGS) so existing conf.d entries port over.
        path = item.get("handler", item.get("HANDLER"))
        kwargs = item.get("kwargs", item.get("KWARGS")) or {}
        if not isinstance(path, str) or not path:
            raise ConfigError("a handler entry needs 'handler'")
        if not isinstance(kwargs, dict):
            raise ConfigError("handler kwargs must be a mapping")
        specs.append(HandlerSpec(path, dict(kwargs)))
    return tuple(specs)


def _file_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """The YAML file's settings, coerced like the environment's (errors name the file's keys)."""
    values = read_mapping(GraderConfig, data, keys=_FILE_SCALARS)
    raw_limits = data.get("limits") or {}
    if not isinstance(raw_limits, dict):
        raise ConfigError("limits must be a mapping")
    for key in raw_limits:
        if key not in Limits.__dataclass_fields__:
            raise ConfigError(f"unknown limit {key}")
    values["limits"] = read_mapping(Limits, raw_limits, label=lambda key: f"limits.{key}")
    if "handlers" in data:
        values["handlers"] = _handler_specs(data["handlers"])
    if "preload_modules" in data:
        modules = data["preload_modules"] or []
        if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
            raise ConfigError("preload_modules must be a list of module names")
        values["preload_modules"] = tuple(modules)
    if "http_basic_auth" in data and data["http_basic_auth"] is not None:
        auth = data["http_basic_auth"]
        if isinstance(auth, str) and ":" in auth:
            auth = auth.split(":", 1)
        if not (isinstance(auth, list | tuple) and len(auth) == 2):
            raise ConfigError("http_basic_auth must be [user, password] or 'user:password'")
        values["http_basic_auth"] = (str(auth[0]), str(auth[1]))
    return values


def config_from_sources(env: Mapping[str, str], file_data: Mapping[str, Any] | None = None,
                        password_file_text: str | None = None) -> GraderConfig:
    """Build the configuration from already-read sources (pure; the I/O lives in ``load_config``).

    Precedence: defaults < file < password file < environment. An empty variable counts as unset.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    try:
        values = _file_values(dict(file_data or {}))
        limits = values.pop("limits")
    except SettingsError as exc:
        problems.extend(exc.problems)
    if password_file_text is not None:
        values["password"] = password_file_text.rstrip("\r\n")
    if not values.get("queue"):
        values.pop("queue", None)  # an empty queue in the file is as good as none
    try:
        limits.update(read_env(LimitVariables, env, blank_is_unset=True))
    except SettingsError as exc:
        problems.extend(exc.problems)
    try:
        config = load(GraderConfig, env, base=values, blank_is_unset=True)
    except SettingsError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    if problems:
        raise ConfigError(problems)
    config = replace(config, limits=replace(config.limits, **limits))
    problems = validate(config)
    if problems:
        raise ConfigError(problems)
    return config


def validate(config: GraderConfig) -> list[str]:
    problems = list(config.limits.validate())
    if config.slots < 1:
        problems.append("slots must be at least 1")
    if not 0 <= config.http_port <= 65535:
        problems.append("http_port must be a TCP port (0 picks a free one)")
    if not config.server_url.startswith(("http://", "https://")):
        problems.append("server_url must start with http:// or https://")
    if config.server_url.endswith("/"):
        problems.append("server_url must not end with '/'")
    if config.drain_seconds < 0:
        problems.append("drain_seconds must not be negative")
    if config.poll_min_seconds <= 0 or config.poll_max_seconds < config.poll_min_seconds:
        problems.append("poll_min_seconds must be > 0 and <= poll_max_seconds")
    if config.long_poll_seconds < 0:
        problems.append("long_poll_seconds must not be negative")
    if config.put_result_attempts < 1:
        problems.append("put_result_attempts must be at least 1")
    if config.submission_size_limit_kb < 1:
        problems.append("submission_size_limit_kb must be at least 1")
    if config.liveness_grace_seconds <= 0 or config.self_test_seconds <= 0:
        problems.append("liveness_grace_seconds and self_test_seconds must be positive")
    return problems


def load_config(env: Mapping[str, str] | None = None) -> GraderConfig:
    """Read the YAML file and password file named by the environment, then build the config."""
    env = os.environ if env is None else env
    file_data: dict[str, Any] | None = None
    path = env.get(ENV_PREFIX + "CONFIG_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                loaded = yaml.safe_load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read {ENV_PREFIX}CONFIG_FILE: {exc.strerror}") from None
        except yaml.YAMLError:
            raise ConfigError(f"{ENV_PREFIX}CONFIG_FILE is not valid YAML") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{ENV_PREFIX}CONFIG_FILE must hold a mapping")
        file_data = loaded or {}
    password_text = None
    password_file = env.get(ENV_PREFIX + "PASSWORD_FILE") or (file_data or {}).get("password_file")
    if password_file:
        try:
            with open(str(password_file), encoding="utf-8") as fh:
                password_text = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file: {exc.strerror}") from None
    return config_from_sources(env, file_data, password_text)
