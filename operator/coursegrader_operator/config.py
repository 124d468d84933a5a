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

Secrets are read from the environment or from files and are never logged or put into repr().
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

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
            raise ValueError(f"label selector item {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _secret(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    path = env.get(f"{name}_FILE", "")
    if not value and path:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    return value


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    grader_image: str = ""
    xqueue_url: str = ""
    xqueue_url_override: str = ""
    admin_username: str = ""
    admin_password: str = field(default="", repr=False)
    admin_token: str = field(default="", repr=False)
    scale_interval: float = 2.0
    resync_interval: float = 300.0
    status_min_interval: float = 5.0
    workers: int = 16
    metrics_concurrency: int = 32
    xqueue_timeout: float = 3.0
    request_timeout: float = 30.0
    watch_server_timeout: float = 270.0
    watch_client_timeout: float = 300.0
    watch_connect_timeout: float = 10.0
    watch_inactivity_timeout: float = 70.0
    dns_namespace: str = "kube-system"
    dns_pod_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    xqueue_namespace: str = ""
    xqueue_pod_labels: Mapping[str, str] = field(default_factory=dict)
    posting_level: str = "INFO"
    liveness: str = ""
    log_handlers: bool = False

    @property
    def spec_defaults(self) -> OperatorDefaults:
        return OperatorDefaults(xqueue_url=self.xqueue_url, grader_image=self.grader_image)

    @property
    def has_admin(self) -> bool:
        return bool(self.admin_token or (self.admin_username and self.admin_password))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        d = cls()

        def num(name: str, default: float) -> float:
            raw = e.get(name, "")
            value = float(raw) if raw else default
            if value < 0:
                raise ValueError(f"{name} must not be negative")
            return value

        return cls(
            namespaces=tuple(ns.strip() for ns in e.get("XQOP_NAMESPACES", "").split(",") if ns.strip()),
            grader_image=e.get("XQOP_GRADER_IMAGE", ""),
            xqueue_url=e.get("XQOP_XQUEUE_URL", "").rstrip("/"),
            xqueue_url_override=e.get("XQOP_XQUEUE_URL_OVERRIDE", "").rstrip("/"),
            admin_username=e.get("XQOP_ADMIN_USERNAME", ""),
            admin_password=_secret(e, "XQOP_ADMIN_PASSWORD"),
            admin_token=_secret(e, "XQOP_ADMIN_TOKEN"),
            scale_interval=max(0.2, num("XQOP_SCALE_INTERVAL", d.scale_interval)),
            resync_interval=max(1.0, num("XQOP_RESYNC_INTERVAL", d.resync_interval)),
            status_min_interval=num("XQOP_STATUS_MIN_INTERVAL", d.status_min_interval),
            workers=max(1, int(num("XQOP_WORKERS", d.workers))),
            metrics_concurrency=max(1, int(num("XQOP_METRICS_CONCURRENCY", d.metrics_concurrency))),
            xqueue_timeout=num("XQOP_XQUEUE_TIMEOUT", d.xqueue_timeout),
            request_timeout=num("XQOP_REQUEST_TIMEOUT", d.request_timeout),
            watch_server_timeout=num("XQOP_WATCH_SERVER_TIMEOUT", d.watch_server_timeout),
            watch_client_timeout=num("XQOP_WATCH_CLIENT_TIMEOUT", d.watch_client_timeout),
            watch_connect_timeout=num("XQOP_WATCH_CONNECT_TIMEOUT", d.watch_connect_timeout),
            watch_inactivity_timeout=num("XQOP_WATCH_INACTIVITY_TIMEOUT", d.watch_inactivity_timeout),
            dns_namespace=e.get("XQOP_DNS_NAMESPACE", d.dns_namespace),
            dns_pod_labels=_labels(e.get("XQOP_DNS_POD_LABELS", "k8s-app=kube-dns")),
            xqueue_namespace=e.get("XQOP_XQUEUE_NAMESPACE", ""),
            xqueue_pod_labels=_labels(e.get("XQOP_XQUEUE_POD_LABELS", "")),
            posting_level=e.get("XQOP_POSTING_LEVEL", d.posting_level).upper(),
            liveness=e.get("XQOP_LIVENESS", ""),
            log_handlers=e.get("XQOP_LOG_HANDLERS", "") in ("1", "true", "yes"),
        )
