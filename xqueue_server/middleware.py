"""Request middleware (one, ``request_middleware``): edge checks of headers, query and path; the
last-resort error mapping; the append-slash redirect; the body deadline; request metrics.

- The edge checks refuse request data that could not be stored or hashed (lone surrogates from
  non-UTF-8 header bytes, NUL) in the parts of a request every handler may use: the headers we read,
  the query string and the path parameters. Bodies are checked where they are read (``uploads``).
- The last resort maps what escapes a handler to a clean reply in the route's own format (the
  XQueue envelope on the classic routes, a JSON error on the admin API): ``DatabaseUnavailable``
  and ``StorageUnavailable`` become 503 with Retry-After; anything else is a bug, answered 500 and
  logged without its message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import web

from .abuse import body_deadline
from .context import CONTEXT_KEY
from .logs import error_fields
from .outage import DatabaseUnavailable
from .protocol import NOT_FOUND_BODY, SERVER_ERROR_BODY, failure
from .storage import StorageUnavailable
from .uploads import BROKEN_BODY
from .validation import text_problem

log = logging.getLogger("xqueue.app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RETRY_AFTER_SECONDS = 5
UNAVAILABLE_MESSAGE = "XQueue is temporarily unavailable (its database cannot be reached); retry later"
STORAGE_UNAVAILABLE_MESSAGE = "XQueue cannot store files right now; nothing was queued, retry later"
# Headers some handler reads: credentials, the proxy's client address, the host for file URLs.
CHECKED_HEADERS = ("Authorization", "Cookie", "X-Real-IP", "Host")
MAX_CLIENT_IP_CHARS = 255


def route_family(path: str) -> str:
    """'classic' (XQueue envelope), 'admin' (JSON errors) or 'ops' (plain text)."""
    if path.startswith("/api/"):
        return "admin"
    if path.startswith("/xqueue/") and not path.startswith("/xqueue/files/"):
        return "classic"
    return "ops"


def error_response(path: str, status: int, message: str, *, headers: dict[str, str] | None = None,
                   envelope_status: int | None = None) -> web.Response:
    """An error in the route's own format. Classic routes answer application errors with HTTP 200
    and ``return_code`` 1 like upstream (``envelope_status``), and server-side trouble with its status."""
    family = route_family(path)
    if family == "classic":
        return web.json_response(failure(message), status=envelope_status or status, headers=headers)
    if family == "admin":
        return web.json_response({"error": message}, status=status, headers=headers)
    return web.Response(status=status, text=message, headers=headers)


def request_problem(request: web.Request) -> str | None:
    """What is wrong with the headers, query or path parameters of a request, or None."""
    for name in CHECKED_HEADERS:
        for value in request.headers.getall(name, ()):
            if text_problem(value):
                return f"the {name} header is not valid text"
    client_ip = request.headers.get("X-Real-IP")
    if client_ip is not None and len(client_ip) > MAX_CLIENT_IP_CHARS:
        return "the X-Real-IP header is too long"
    for key, value in request.query.items():
        if text_problem(key) or text_problem(value):
            return "the query string holds a NUL character or invalid text"
    for value in request.match_info.values():
        if text_problem(value):
            return "the URL path holds a NUL character or invalid text"
    return None


def request_middleware(body_timeout_seconds: float, on_slow_body: Callable[[], None] = lambda: None) -> Any:
    """The server's one middleware: the last resort, the append-slash redirect, the edge checks and
    ``abuse.body_deadline``, in that order (outermost first), in one coroutine per request.

    Each aiohttp middleware costs a ``partial`` call and a coroutine frame on every request; merged,
    the classic routes skip the redirect logic (only unmatched paths need it) and the body timer
    (only bodies that had not fully arrived with the headers need one)."""
    # Upstream (Django APPEND_SLASH) answers 301 for a missing trailing slash.
    append_slash = web.normalize_path_middleware(append_slash=True, redirect_class=web.HTTPMovedPermanently)
    with_deadline = body_deadline(body_timeout_seconds, on_slow_body)

    async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        problem = request_problem(request)
        if problem is not None:
            return error_response(request.path, 400, f"Bad request: {problem}", envelope_status=200)
        if request.content.is_eof():
            return await handler(request)
        return await with_deadline(request, handler)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Upstream's 404 body, 503 during database outages, no stack traces to clients, request metrics."""
        started = time.perf_counter()
        status = 500
        try:
            routed = request.match_info.http_exception is None
            if routed and request.content.is_eof() and request_problem(request) is None:
                response = await handler(request)  # nearly every request: the body came with the headers
            elif routed:
                response = await checked(request, handler)
            else:  # no route: maybe one with the trailing slash (301), else aiohttp's 404/405
                response = await append_slash(request, partial(checked, handler=handler))
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            if exc.status == 404:
                raise web.HTTPNotFound(text=NOT_FOUND_BODY) from None
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499
            raise
        except DatabaseUnavailable:
            # Logged once per outage by DatabaseHealth, not per request.
            status = 503
            return error_response(request.path, 503, UNAVAILABLE_MESSAGE,
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        except StorageUnavailable:
            status = 503  # logged (class only) where it happened
            return error_response(request.path, 503, STORAGE_UNAVAILABLE_MESSAGE,
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        except BROKEN_BODY:
            # The body broke off or its framing is malformed while a handler was reading it.
            status = 400
            return error_response(request.path, 400, "Bad request: malformed request body", envelope_status=200)
        except Exception as exc:
            # A bug: the root cause needs fixing. The class and frames are logged, never the message,
            # which may quote request data.
            log.exception("unhandled error", extra={"fields": {
                "path": request.path, "method": request.method, **error_fields(exc)}})
            if route_family(request.path) == "ops":
                return web.Response(status=500, text=SERVER_ERROR_BODY)
            return error_response(request.path, 500, "Internal server error")
        finally:
            context = request.app.get(CONTEXT_KEY)
            if context is not None:
                context.metrics.observe_request(request.match_info.route.resource, request.method, status,
                                                time.perf_counter() - started)

    return middleware
