"""Prometheus metrics of one grader daemon (own registry, so several daemons can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from xqueue_grader.sandbox import report

GRADING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.grading_seconds = Histogram(
            "xqgrader_grading_seconds", "Time to grade one submission (pull to reply ready)",
            buckets=GRADING_BUCKETS, registry=r,
        )
        self.submissions = Counter(
            "xqgrader_submissions", "Graded submissions by outcome "
            "(correct, incorrect, error, skipped, handler_error, unreadable)", ["outcome"], registry=r,
        )
        self.sandbox_runs = Counter(
            "xqgrader_sandbox_runs", "Sandboxed runs by kind (staff, student, compare) and status",
            ["kind", "status"], registry=r,
        )
        self.sandbox_kills = Counter(
            "xqgrader_sandbox_kills", "Sandboxed runs stopped by a limit, by reason", ["reason"], registry=r,
        )
        self.sandbox_run_seconds = Histogram(
            "xqgrader_sandbox_run_seconds", "Wall time of one sandboxed run including its overhead",
            buckets=GRADING_BUCKETS, registry=r,
        )
        self.sandbox_feature = Gauge(
            "xqgrader_sandbox_feature", "Isolation features detected at start-up (1 available, 0 not)",
            ["feature"], registry=r,
        )
        self.landlock_abi = Gauge("xqgrader_landlock_abi", "Landlock ABI version (0 = unavailable)", registry=r)
        self.pulls = Counter(
            "xqgrader_pulls", "get_submission calls by result (submission, empty, error)", ["result"], registry=r,
        )
        self.puts = Counter(
            "xqgrader_put_results", "put_result calls by result (ok, rejected, error)", ["result"], registry=r,
        )
        self.slots = Gauge("xqgrader_slots", "Configured grading slots", registry=r)
        self.slots_busy = Gauge("xqgrader_slots_busy", "Slots grading right now", registry=r)
        self.long_poll = Gauge("xqgrader_long_poll", "1 while the server's long-poll is in use "
                               "(0 when disabled or after falling back to polling)", registry=r)
        self.ready = Gauge("xqgrader_ready", "1 when logged in, sandbox up and not draining", registry=r)

    def record_features(self, features: dict[str, object]) -> None:
        for name in ("seccomp", "landlock", "landlock_signal_scope", "ipc_namespace", "read_only_root"):
            self.sandbox_feature.labels(name).set(1 if features.get(name) else 0)
        self.sandbox_feature.labels("network_blocked").set(0 if features.get("network", "open") == "open" else 1)
        self.sandbox_feature.labels("no_capabilities").set(1 if features.get("capabilities") == "0" else 0)
        classes = report.layers(dict(features))["seccomp"]["classes"]
        for name, active in classes.items():
            self.sandbox_feature.labels(f"seccomp_{name}").set(1 if active else 0)
        abi = features.get("landlock_abi")
        self.landlock_abi.set(abi if isinstance(abi, int) else 0)
