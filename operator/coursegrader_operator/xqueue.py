"""Client for the XQueue server's admin JSON API (docs/contracts.md, `/api/v1`).

The operator reads queue lengths for scaling and, when asked, provisions a queue and a grader
account. Which base URL it dials is decided by the caller (the CR's URL or the operator-level
override), so tests point every call at 127.0.0.1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from .scaling import QueueLoad


class XQueueError(Exception):
    """The XQueue server could not be reached or answered with an error (message is safe to show)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class Auth:
    """Basic or Bearer credentials; never printed."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def header(self) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username:
            return {"Authorization": aiohttp.encode_basic_auth(self.username, self.password)}
        return {}

    def __bool__(self) -> bool:
        return bool(self.token or self.username)


def _by_grader(raw: Any) -> dict[str, int] | None:
    """`in_flight_by_grader` if the server sent a usable one, else None (older servers: no field)."""
    if not isinstance(raw, Mapping):
        return None
    try:
        return {str(address): int(n) for address, n in raw.items()}
    except (TypeError, ValueError):
        return None


def _load(payload: Mapping[str, Any], queue: str) -> QueueLoad:
    try:
        age = payload.get("oldest_queued_age_seconds")
        return QueueLoad(queued=int(payload["queued"]), in_flight=int(payload.get("in_flight") or 0),
                         oldest_queued_age=float(age) if age is not None else None,
                         in_flight_by_grader=_by_grader(payload.get("in_flight_by_grader")))
    except (KeyError, TypeError, ValueError) as e:
        raise XQueueError(f"malformed length reply for queue {queue!r}") from e


class XQueueClient:
    def __init__(self, *, timeout: float = 3.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": "coursegrader-operator"},
                connector=aiohttp.TCPConnector(limit=64))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, url: str, auth: Auth, body: Any = None) -> Any:
        headers = {"Accept": "application/json", **auth.header()}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, url, data=data, headers=headers,
                                            allow_redirects=False) as resp:
                text = await resp.text()
                if resp.status >= 400 or resp.status in (301, 302, 303):
                    try:
                        detail = str(json.loads(text).get("error", ""))
                    except (ValueError, AttributeError):
                        detail = ""
                    raise XQueueError(f"{method} {_path(url)} -> HTTP {resp.status}"
                                      + (f": {detail}" if detail else ""))
                try:
                    return json.loads(text) if text else {}
                except ValueError as e:
                    raise XQueueError(f"{method} {_path(url)} did not return JSON") from e
        except (aiohttp.ClientError, TimeoutError) as e:
            # No path in the message: it is shared by every course on the same server (and shown in
            # their status), so it must not change with whichever queue happened to ask first.
            detail = str(e) or "timed out"
            raise XQueueError(f"cannot reach the XQueue server: {type(e).__name__}: {detail}",
                              unreachable=True) from e

    async def queue_length(self, base_url: str, queue: str, auth: Auth) -> QueueLoad:
        payload = await self._call("GET", f"{base_url}/api/v1/queues/{quote(queue, safe='')}/length", auth)
        return _load(payload, queue)

    async def all_queue_lengths(self, base_url: str, auth: Auth) -> dict[str, QueueLoad]:
        """Every queue in one request (admin only): one call per tick per server, not per course."""
        payload = await self._call("GET", f"{base_url}/api/v1/queues", auth)
        try:
            return {str(q["name"]): _load(q, str(q["name"])) for q in payload["queues"]}
        except (KeyError, TypeError) as e:
            raise XQueueError("malformed /api/v1/queues reply") from e

    async def ensure_queue(self, base_url: str, queue: str, auth: Auth) -> bool:
        payload = await self._call("PUT", f"{base_url}/api/v1/queues/{quote(queue, safe='')}", auth, {})
        return bool(payload.get("created"))

    async def ensure_user(self, base_url: str, username: str, password: str, pull_queues: list[str],
                          auth: Auth) -> None:
        body = {"password": password, "is_admin": False, "pull_queues": pull_queues, "submit_queues": []}
        await self._call("PUT", f"{base_url}/api/v1/users/{quote(username, safe='')}", auth, body)

    async def delete_user(self, base_url: str, username: str, auth: Auth) -> None:
        await self._call("DELETE", f"{base_url}/api/v1/users/{quote(username, safe='')}", auth)


def _path(url: str) -> str:
    """The URL without scheme/host for messages (hosts can be internal; paths are enough)."""
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
