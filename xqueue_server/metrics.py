"""Prometheus metrics of one server process (own registry, so tests can run several apps at once)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class CachedCounter(Counter):
    """A Counter whose ``labels(...)`` is a dict lookup once a label set was seen: prometheus_client
    validates, converts and looks the values up under a lock on every call, and the request path
    counts submissions, pulls, results and deliveries this way several times per cycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children: dict[tuple[Any, ...], Any] = {}

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if labelkwargs:
            return super().labels(*labelvalues, **labelkwargs)
        child = self._children.get(labelvalues)
        if child is None:
            child = self._children[labelvalues] = super().labels(*labelvalues)
        return child

    def remove(self, *labelvalues: Any) -> None:
        self._children.clear()
        super().remove(*labelvalues)

    def clear(self) -> None:
        self._children.clear()
        super().clear()


class Metrics:
    def __init__(self) -> None:
        # The labelled request histograms by (route resource, method, status): ``labels()`` builds and
        # looks up its key under a lock on every call, which showed in the per-request profile.
        self._request_children: dict[tuple[Any, str, int], Any] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "xqueue_http_request_duration_seconds",
            "HTTP request latency by route and status",
            ["route", "method", "status"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.submissions = CachedCounter("xqueue_submissions_total", "Submissions accepted", ["queue"], registry=r)
        self.superseded = CachedCounter(
            "xqueue_submissions_superseded_total", "Earlier submissions retired by a newer one", ["queue"], registry=r
        )
        self.pulls = CachedCounter("xqueue_pulls_total", "Submissions handed to graders", ["queue"], registry=r)
        self.empty_pulls = CachedCounter("xqueue_empty_pulls_total", "get_submission calls that found nothing",
                                         ["queue"], registry=r)
        self.pulls_released = CachedCounter(
            "xqueue_pulls_released_total", "Claimed submissions handed back at once: their grader had gone",
            ["queue"], registry=r,
        )
        self.lease_expiries = CachedCounter(
            "xqueue_lease_expiries_total", "Pulls of submissions whose previous lease ran out", ["queue"], registry=r
        )
        self.poison = CachedCounter(
            "xqueue_poison_retired_total", "Submissions retired after too many pulls without a result",
            ["queue"], registry=r,
        )
        self.login_failures = CachedCounter(
            "xqueue_login_failures_total",
            "Password checks that failed (bad_credentials) or were refused by the login throttle (throttled)",
            ["method", "reason"], registry=r,
        )
        self.slow_requests = Counter(
            "xqueue_slow_requests_total", "Requests cut off because their body did not arrive in time",
            registry=r,
        )
        self.results = CachedCounter("xqueue_results_total", "put_result outcomes", ["outcome"], registry=r)
        self.callback_attempts = CachedCounter("xqueue_callback_attempts_total", "LMS callback attempts", ["kind"],
                                               registry=r)
        self.callback_failures = CachedCounter("xqueue_callback_failures_total", "Failed LMS callback attempts",
                                               ["kind"], registry=r)
        self.callback_dead = Counter("xqueue_callback_dead_lettered_total", "Callbacks given up after the horizon",
                                     registry=r)
        self.callback_latency = Histogram(
            "xqueue_callback_duration_seconds", "Duration of one LMS callback attempt", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.result_to_delivery = Histogram(
            "xqueue_callback_delivery_delay_seconds", "From put_result to the LMS acknowledging", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
        )
        self.queue_depth = Gauge("xqueue_queue_depth", "Submissions a grader could pull now", ["queue"], registry=r)
        self.queue_in_flight = Gauge("xqueue_queue_in_flight", "Submissions pulled with a valid lease", ["queue"],
                                     registry=r)
        self.queue_oldest_age = Gauge("xqueue_queue_oldest_age_seconds", "Age of the oldest pullable submission",
                                      ["queue"], registry=r)
        self.callbacks_pending = Gauge("xqueue_callbacks_pending", "Callbacks waiting in the outbox", registry=r)
        self.callbacks_dead = Gauge("xqueue_callbacks_dead", "Dead-lettered callbacks (see xqueue-admin)",
                                    registry=r)
        self.callback_oldest_age = Gauge("xqueue_callback_oldest_pending_age_seconds",
                                         "Age of the oldest undelivered callback", registry=r)
        self.callback_hosts_saturated = Gauge(
            "xqueue_callback_hosts_saturated",
            "LMS hosts using all their delivery slots (XQUEUE_CALLBACK_PER_HOST_CONCURRENCY): slow or hung",
            registry=r)

    def observe_request(self, resource: Any, method: str, status: int, seconds: float) -> None:
        """One request's duration; ``resource`` is the matched aiohttp resource (None: no route)."""
        # Any string can be an HTTP method; keep the label set (and this cache) bounded.
        if method not in KNOWN_METHODS:
            method = "OTHER"
        key = (resource, method, status)
        child = self._request_children.get(key)
        if child is None:
            route = resource.canonical if resource is not None else "unmatched"
            child = self._request_children[key] = self.requests.labels(route, method, str(status))
        child.observe(seconds)
