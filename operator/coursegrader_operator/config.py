"""Operator configuration: one typed object read from the environment (the chart sets these).

| variable | meaning | default |
|---|---|---|
| `XQOP_NAMESPACES` | comma-separated namespaces to watch; empty = all namespaces | (all) |
| `XQOP_GRADER_IMAGE` | grader image for CourseGraders without `spec.image` | (none) |
| `XQOP_XQUEUE_URL` | XQueue URL for CourseGraders without `spec.server.url` | (none) |
| `XQOP_XQUEUE_URL_OVERRIDE` | URL the *operator* dials instead of the CR's (tests: 127.0.0.1) | (none) |
| `XQOP_ADMIN_USERNAME`, `XQOP_ADMIN_PASSWORD[_FILE]` | XQueue admin (provisioning, lengths) | (none) |
| `XQOP_ADMIN_TOKEN[_FILE]` | XQueue admin API token, instead of username/password | (none) |
| `XQOP_SCALE_INTERVAL` | seconds between queue-length reads | 2 |
| `XQOP_RESYNC_INTERVAL` | seconds between full re-applies of every CourseGrader (drift backstop) | 300 |
| `XQOP_STATUS_MIN_INTERVAL` | min seconds between status writes that only change queue figures | 5 |
| `XQOP_WORKERS` | concurrent reconciles | 16 |
| `XQOP_METRICS_CONCURRENCY` | concurrent queue-length requests | 32 |
| `XQOP_XQUEUE_TIMEOUT` | seconds per XQueue API request | 3 |
| `XQOP_REQUEST_TIMEOUT` | seconds per Kubernetes API request | 30 |
| `XQOP_WATCH_SERVER_TIMEOUT` | seconds the API server keeps one watch open | 270 |
| `XQOP_WATCH_CLIENT_TIMEOUT` | seconds before the operator abandons one watch request | 300 |
| `XQOP_WATCH_CONNECT_TIMEOUT` | seconds to connect a watch | 10 |
| `XQOP_WATCH_INACTIVITY_TIMEOUT` | seconds without any watch event (bookmarks too) -> reconnect | 70 |
| `XQOP_DNS_NAMESPACE`, `XQOP_DNS_POD_LABELS` | cluster DNS (egress) | kube-system, k8s-app=kube-dns |
| `XQOP_XQUEUE_NAMESPACE`, `XQOP_XQUEUE_POD_LABELS` | XQueue server pods (egress) | (none: any address) |
| `XQOP_POSTING_LEVEL` | lowest level of Kubernetes events posted (DEBUG/INFO/WARNING) | INFO |
| `XQOP_LIVENESS` | liveness endpoint URL for kopf, e.g. http://0.0.0.0:8081/healthz | (none) |
| `XQOP_LOG_HANDLERS` | `1`: keep kopf's per-handler INFO log lines | 0 |

Values follow the shared coercion of xqueue_common.settings (the server's and the grader's too): numbers
are finite and not negative, intervals and timeouts also take a unit (`250ms`, `30s`, `5m`, `1h`), booleans
are `1/0`, `true/false`, `yes/no`, `on/off` in any case, and an empty number or boolean keeps its default.
Every malformed variable is named in one error.

Secrets are read from the environment or from files and are never logged or put into repr().
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from xqueue_common.settings import env, load, parse_duration

from .spec import OperatorDefaults


def _labels(text: str) -> dict[str, str]:
    """Parse "a=b,c=d" into a dict (the same syntax kubectl uses for equality selectors)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"has label selector item {item!r}, which is not key=value")
        out[key.strip()] = value.strip()
    return out


def _url(text: str) -> str:
    return text.rstrip("/")


def _upper(text: str) -> str:
    return text.upper()


def _secret_file(env: Mapping[str, str], name: str) -> str:
    """The content of the file named by ``{name}_FILE`` (stripped), or ""."""
    path = env.get(f"{name}_FILE", "")
    if not path:
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = env("XQOP_NAMESPACES", default=())
    grader_image: str = env("XQOP_GRADER_IMAGE", default="")
    xqueue_url: str = env("XQOP_XQUEUE_URL", default="", parse=_url)
    xqueue_url_override: str = env("XQOP_XQUEUE_URL_OVERRIDE", default="", parse=_url)
    admin_username: str = env("XQOP_ADMIN_USERNAME", default="")
    admin_password: str = env("XQOP_ADMIN_PASSWORD", default="", secret=True)  # or XQOP_ADMIN_PASSWORD_FILE
    admin_token: str = env("XQOP_ADMIN_TOKEN", default="", secret=True)  # or XQOP_ADMIN_TOKEN_FILE
    # Read as given, then raised to the floors in from_env (scale 0.2 s, resync 1 s, workers 1).
    scale_interval: float = env("XQOP_SCALE_INTERVAL", default=2.0, parse=parse_duration, min=0)
    resync_interval: float = env("XQOP_RESYNC_INTERVAL", default=300.0, parse=parse_duration, min=0)
    status_min_interval: float = env("XQOP_STATUS_MIN_INTERVAL", default=5.0, parse=parse_duration, min=0)
    workers: int = env("XQOP_WORKERS", default=16, min=0)
    metrics_concurrency: int = env("XQOP_METRICS_CONCURRENCY", default=32, min=0)
    xqueue_timeout: float = env("XQOP_XQUEUE_TIMEOUT", default=3.0, parse=parse_duration, min=0)
    request_timeout: float = env("XQOP_REQUEST_TIMEOUT", default=30.0, parse=parse_duration, min=0)
    watch_server_timeout: float = env("XQOP_WATCH_SERVER_TIMEOUT", default=270.0, parse=parse_duration, min=0)
    watch_client_timeout: float = env("XQOP_WATCH_CLIENT_TIMEOUT", default=300.0, parse=parse_duration, min=0)
    watch_connect_timeout: float = env("XQOP_WATCH_CONNECT_TIMEOUT", default=10.0, parse=parse_duration, min=0)
    watch_inactivity_timeout: float = env("XQOP_WATCH_INACTIVITY_TIMEOUT", default=70.0, parse=parse_duration,
                                          min=0)
    dns_namespace: str = env("XQOP_DNS_NAMESPACE", default="kube-system")
    # An empty XQOP_DNS_POD_LABELS is no labels (no DNS egress rule), not the default.
    dns_pod_labels: Mapping[str, str] = env("XQOP_DNS_POD_LABELS", default_factory=lambda: {"k8s-app": "kube-dns"},
                                            parse=_labels)
    xqueue_namespace: str = env("XQOP_XQUEUE_NAMESPACE", default="")
    xqueue_pod_labels: Mapping[str, str] = env("XQOP_XQUEUE_POD_LABELS", default_factory=dict, parse=_labels)
    posting_level: str = env("XQOP_POSTING_LEVEL", default="INFO", parse=_upper)
    liveness: str = env("XQOP_LIVENESS", default="")
    log_handlers: bool = env("XQOP_LOG_HANDLERS", default=False)

    @property
    def spec_defaults(self) -> OperatorDefaults:
        return OperatorDefaults(xqueue_url=self.xqueue_url, grader_image=self.grader_image)

    @property
    def has_admin(self) -> bool:
        return bool(self.admin_token or (self.admin_username and self.admin_password))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """The configuration from the environment; malformed variables raise SettingsError (a ValueError)."""
        e = os.environ if env is None else env
        config = load(cls, e)
        return dataclasses.replace(
            config,
            # A secret's variable wins over its file.
            admin_password=config.admin_password or _secret_file(e, "XQOP_ADMIN_PASSWORD"),
            admin_token=config.admin_token or _secret_file(e, "XQOP_ADMIN_TOKEN"),
            scale_interval=max(0.2, config.scale_interval),
            resync_interval=max(1.0, config.resync_interval),
            workers=max(1, config.workers),
            metrics_concurrency=max(1, config.metrics_concurrency),
        )
