"""Shared helpers for the operator's cluster tests (the fixtures built on them live in conftest.py).

* ``Rest``: a small synchronous client for the test's own reads and writes (camelCase JSON, no models).
* ``running_operator``: the real operator in-process through kopf's KopfRunner, with fast settings.
* ``wait_for``: poll a condition with a deadline (bounded in time and count), never a fixed sleep.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import pathlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import kopf
import requests
from kopf.testing import KopfRunner

from coursegrader_operator import constants as C

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / f"{C.PLURAL}.{C.GROUP}.yaml"
GRADER_IMAGE = "registry.invalid/xqueue-grader:test"  # never pulled: kwok only fakes pods
T = TypeVar("T")

# Fast settings for tests: short watches so KopfRunner threads exit promptly, quick scaling ticks.
FAST_ENV = {
    "XQOP_GRADER_IMAGE": GRADER_IMAGE,
    "XQOP_SCALE_INTERVAL": "0.5",
    "XQOP_RESYNC_INTERVAL": "60",
    "XQOP_STATUS_MIN_INTERVAL": "0.5",
    "XQOP_XQUEUE_TIMEOUT": "2",
    "XQOP_REQUEST_TIMEOUT": "10",
    "XQOP_WATCH_SERVER_TIMEOUT": "10",
    "XQOP_WATCH_CLIENT_TIMEOUT": "20",
    "XQOP_WATCH_CONNECT_TIMEOUT": "5",
    "XQOP_WATCH_INACTIVITY_TIMEOUT": "70",
    "XQOP_WORKERS": "4",
}


def wait_for(check: Callable[[], T | bool | None], *, timeout: float, what: str, interval: float = 0.1) -> T:
    """Return check()'s first truthy value; fail after `timeout` s (and a matching number of tries)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    for _ in range(int(timeout / interval) + 50):
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


class Rest:
    """Synchronous JSON calls to the API server with the admin credentials from a kubeconfig."""

    PATHS = {
        "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
        "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
        "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
        "Secret": "/api/v1/namespaces/{ns}/secrets",
        "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
        "Event": "/api/v1/namespaces/{ns}/events",
        "Pod": "/api/v1/namespaces/{ns}/pods",
        C.KIND: f"/apis/{C.API_VERSION}/namespaces/{{ns}}/{C.PLURAL}",
    }

    def __init__(self, kubeconfig: str | os.PathLike[str]) -> None:
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        try:
            info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        finally:
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old
        assert info is not None and info.certificate_path and info.private_key_path, "needs cert paths"
        self.server = info.server.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # loopback only, never through a proxy from the environment
        self.session.verify = str(info.ca_path)
        self.session.cert = (str(info.certificate_path), str(info.private_key_path))

    def url(self, kind: str, ns: str, name: str | None = None, sub: str | None = None) -> str:
        url = self.server + self.PATHS[kind].format(ns=ns)
        if name:
            url += f"/{name}"
        if sub:
            url += f"/{sub}"
        return url

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        resp = self.session.get(self.url(kind, ns, name), timeout=10)
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def list(self, kind: str, ns: str, **params: str) -> list[dict[str, Any]]:
        resp = self.session.get(self.url(kind, ns), params=params, timeout=10)
        resp.raise_for_status()
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    def create(self, kind: str, ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        resp = self.session.post(self.url(kind, ns), json=body, timeout=10)
        if resp.status_code >= 400:
            raise AssertionError(f"create {kind} failed: {resp.status_code} {resp.text}")
        result: dict[str, Any] = resp.json()
        return result

    def try_create(self, kind: str, ns: str, body: Mapping[str, Any]) -> requests.Response:
        return self.session.post(self.url(kind, ns), json=body, timeout=10)

    def patch(self, kind: str, ns: str, name: str, patch: Mapping[str, Any],
              kind_of_patch: str = "merge") -> dict[str, Any]:
        content_type = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
                        "strategic": "application/strategic-merge-patch+json"}[kind_of_patch]
        resp = self.session.patch(self.url(kind, ns, name), data=json.dumps(patch),
                                  headers={"Content-Type": content_type}, timeout=10)
        if resp.status_code >= 400:
            raise AssertionError(f"patch {kind}/{name} failed: {resp.status_code} {resp.text}")
        result: dict[str, Any] = resp.json()
        return result

    def delete(self, kind: str, ns: str, name: str, propagation: str = "Background") -> bool:
        resp = self.session.delete(self.url(kind, ns, name), timeout=10,
                                   json={"propagationPolicy": propagation})
        if resp.status_code == 404:
            return False
        resp.raise_for_status()
        return True

    def events(self, ns: str, name: str) -> builtins.list[dict[str, Any]]:  # plain `list` names the method above
        return [e for e in self.list("Event", ns)
                if e.get("involvedObject", {}).get("name") == name
                and e.get("involvedObject", {}).get("kind") == C.KIND]

    def close(self) -> None:
        self.session.close()


@contextlib.contextmanager
def running_operator(namespace: str, *more: str, timeout: float = 60) -> Iterator[KopfRunner]:
    """The real operator in this process (own thread and loop), watching the given namespaces.

    On exit it checks that the operator stopped cleanly and logged no traceback: an exception
    swallowed inside a handler or a background task fails the test here.
    """
    args = ["run", "--standalone", "-m", "coursegrader_operator.handlers", "--verbose"]
    for ns in (namespace, *more):
        args += ["--namespace", ns]
    runner = KopfRunner(args, timeout=timeout, settings=kopf.OperatorSettings())
    with runner:
        yield runner
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0, runner.output[-5000:]
    errors = operator_errors(runner.output)
    assert not errors, "\n\n".join(errors)[-20000:]


_LOG_LINE = re.compile(r"^\[[^\]]+\] (\S+)\s+\[(\w+)\s*\]")
OWN_LOGGERS = ("kopf", "coursegrader")


def operator_errors(output: str) -> list[str]:
    """ERROR records and tracebacks logged by kopf or the operator.

    KopfRunner captures the whole process's logging, which in the end-to-end tests includes the
    XQueue server running in a thread; its records are not the operator's to answer for.
    """
    found: list[str] = []
    logger, level = "", ""
    block: list[str] = []
    for line in [*output.splitlines(), "[end] end [INFO]"]:
        m = _LOG_LINE.match(line)
        if m:
            if block and logger.startswith(OWN_LOGGERS) and (level == "ERROR" or any(
                    "Traceback" in b for b in block)):
                found.append("\n".join(block))
            logger, level, block = m.group(1), m.group(2), [line]
        elif block:
            block.append(line)
        elif "Traceback" in line:
            found.append(line)  # not inside any log record: cannot be attributed, so it counts
    return found


def secret_manifest(name: str, username: str, password: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"username": username, "password": password}}


def coursegrader_manifest(name: str, *, queue: str = "course-queue", url: str = "http://127.0.0.1:9",
                          secret: str | None = "grader-login", **spec: Any) -> dict[str, Any]:
    server: dict[str, Any] = {"url": url}
    if secret:
        server["credentialsSecretRef"] = {"name": secret}
    else:
        server["provision"] = True
    body: dict[str, Any] = {
        "queue": queue,
        "server": server,
        "repo": {"url": "https://git.example.invalid/course.git", "ref": "main"},
    }
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return {"apiVersion": C.API_VERSION, "kind": C.KIND, "metadata": {"name": name}, "spec": body}


def condition(cg: Mapping[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in (cg or {}).get("status", {}).get("conditions", []):
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def is_ready(cg: Mapping[str, Any] | None) -> bool:
    cg = cg or {}
    seen = cg.get("status", {}).get("observedGeneration")
    return condition(cg, C.COND_READY).get("status") == "True" and seen == cg["metadata"]["generation"]


def count_lines(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))
