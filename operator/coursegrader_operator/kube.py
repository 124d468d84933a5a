"""A small asyncio Kubernetes REST client on aiohttp.

kopf streams the watches; this client does the writes (server-side apply, status patches, reads of
single objects). It avoids the official `kubernetes` package on purpose: that client is synchronous
and its generated models are most of a Python operator's memory (anchors.md §5.2). Credentials come
from kopf's own minimal login helpers (service account first, then kubeconfig).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

from . import constants as C

log = logging.getLogger(__name__)

# Where each kind lives: (API path prefix, plural); the managed kinds come from their table.
_PATHS: dict[tuple[str, str], tuple[str, str]] = {
    **{(m.api_version, m.kind): (m.api_prefix, m.plural) for m in C.MANAGED},
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "Event"): ("/api/v1", "events"),
    (C.API_VERSION, C.KIND): (f"/apis/{C.API_VERSION}", C.PLURAL),
}


class ApiError(Exception):
    """A non-2xx answer from the API server (the message is the server's Status.message)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None,
                subresource: str | None = None) -> str:
    prefix, plural = _PATHS[(api_version, kind)]
    path = f"{prefix}/namespaces/{quote(namespace, safe='')}/{plural}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    if subresource:
        path += f"/{subresource}"
    return path


def default_login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """In-cluster service account if present, else $KUBECONFIG / ~/.kube/config."""
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig found")
    return info


class KubeClient:
    """Async REST calls with re-login on 401 (service-account tokens rotate)."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], *, timeout: float = 30.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0))
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()

    async def _ensure(self, refresh: bool = False) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is not None and not refresh:
                return self._session
            if self._session is not None:
                await self._session.close()
            info = self._login()
            self._server = info.server.rstrip("/")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=64),
                headers={**info.as_http_headers(), "User-Agent": C.OPERATOR_NAME},
                timeout=self._timeout,
            )
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        for attempt in (1, 2):
            session = await self._ensure(refresh=False)
            async with session.request(method, self._server + path, data=data, params=params,
                                       headers=headers) as resp:
                raw = await resp.read()
                if resp.status == 401 and attempt == 1:
                    # Tokens rotate; one fresh login, then give up (bounded).
                    await self._ensure(refresh=True)
                    continue
                if resp.status >= 400:
                    text = raw.decode(errors="replace")
                    try:
                        payload = json.loads(text)
                        message = str(payload.get("message", text))
                        reason = str(payload.get("reason", resp.reason))
                    except ValueError:
                        message, reason = text[:500], str(resp.reason)
                    raise ApiError(resp.status, reason, message)
                return json.loads(raw) if raw else {}
        raise ApiError(401, "Unauthorized", "re-login did not help")

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", object_path(api_version, kind, namespace, name))
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply: create if missing, else take (force) ownership of the given fields."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        return await self.request("PATCH", path, body=obj,
                                  params={"fieldManager": C.FIELD_MANAGER, "force": str(force).lower()},
                                  content_type="application/apply-patch+yaml")

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        return await self.request("POST", path, body=obj, params={"fieldManager": C.FIELD_MANAGER})

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        try:
            await self.request("DELETE", object_path(api_version, kind, namespace, name))
        except ApiError as e:
            if e.not_found:
                return False
            raise
        return True

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        path = object_path(C.API_VERSION, C.KIND, namespace, name, "status")
        return await self.request("PATCH", path, body={"status": status},
                                  params={"fieldManager": C.FIELD_MANAGER},
                                  content_type="application/merge-patch+json")

    async def merge_patch(self, api_version: str, kind: str, namespace: str, name: str,
                          patch: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", object_path(api_version, kind, namespace, name), body=patch,
                                  params={"fieldManager": C.FIELD_MANAGER},
                                  content_type="application/merge-patch+json")

    async def list(self, api_version: str, kind: str, namespace: str,
                   label_selector: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of a kind in a namespace matching equality labels (one page; used for grader pods)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))
        reply = await self.request("GET", object_path(api_version, kind, namespace),
                                   params={"labelSelector": selector})
        return list(reply.get("items") or [])
