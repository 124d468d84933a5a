"""The HTTP side of abuse resistance: slow clients (slowloris) and throttled logins.

Slow clients. A connection that sends its request a byte at a time holds a socket and a handler for
as long as it likes, so a few hundred of them exhaust a server. Two bounds:

- Headers: aiohttp's keep-alive timer also runs while a connection waits for a complete request
  line and headers (from the moment it opens, and again after each response), so its
  ``keepalive_timeout``, set to ``header_timeout_seconds``, closes connections that dribble headers
  or sit idle. aiohttp's own default is an hour.
- Body: aiohttp has no body read timeout, and handlers read bodies in several ways (forms, multipart
  streams, JSON). ``body_deadline`` therefore bounds the time until the body's last byte for every
  handler at once: the handler runs under ``asyncio.timeout`` until the payload reports its end, and
  a body that has not arrived by then is answered 408 and the connection closed. A body that came
  with the headers (nearly all requests) costs no timer at all, and work after the body (database,
  storage) is never cut off by this. After any early answer aiohttp drains the unread rest of a body
  for at most its ``lingering_time`` (10 s) before closing, so a slow body holds a connection for at
  most the body timeout plus those 10 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .protocol import failure
from .ratelimit import retry_after_header

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_TIMEOUT_MESSAGE = "Request body did not arrive in time"


def server_options(header_timeout_seconds: float) -> dict[str, Any]:
    """aiohttp request-handler options (``web.Application(handler_args=...)``)."""
    return {"keepalive_timeout": header_timeout_seconds}


def error_reply(path: str, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error in the route's format: the XQueue envelope on /xqueue/, JSON on /api/, else text."""
    if path.startswith("/api/"):
        return web.json_response({"error": message}, status=status, headers=headers)
    if path.startswith("/xqueue/") and not path.startswith("/xqueue/files/"):
        return web.json_response(failure(message), status=status, headers=headers)
    return web.Response(status=status, text=message, headers=headers)


def throttled_error(path: str, message: str, retry_after: float) -> web.HTTPTooManyRequests:
    """429 for credentials sent with the request (HTTP Basic) while their login is throttled."""
    reply = error_reply(path, 429, message)
    return web.HTTPTooManyRequests(text=reply.text, content_type=reply.content_type,
                                   headers={"Retry-After": retry_after_header(retry_after)})


def body_deadline(timeout_seconds: float, on_timeout: Callable[[], None] = lambda: None) -> Any:
    """Middleware: 408 and close when a request body is not complete ``timeout_seconds`` after the headers."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content.is_eof():
            return await handler(request)
        entered = True
        try:
            async with asyncio.timeout(timeout_seconds) as deadline:

                def body_complete() -> None:
                    if entered:  # the payload may end after the handler returned (aiohttp drains it)
                        deadline.reschedule(None)

                request.content.on_eof(body_complete)
                try:
                    return await handler(request)
                finally:
                    entered = False
        except TimeoutError:
            if not deadline.expired():
                raise  # someone else's timeout
            on_timeout()
            response = error_reply(request.path, 408, BODY_TIMEOUT_MESSAGE)
            response.force_close()
            return response

    return middleware
