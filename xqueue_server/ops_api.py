"""Operations endpoints: liveness, readiness, Prometheus metrics, and signed file downloads."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .context import AppContext
from .storage import LocalStorage, check_signature

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    try:
        await ctx.db.ping()
    except Exception as exc:  # any database failure means not ready
        return web.json_response({"status": "unavailable", "database": type(exc).__name__}, status=503)
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    body = generate_latest(ctx.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/xqueue/files/{key}")
async def download(request: web.Request) -> web.StreamResponse:
    """A file handed to a grader, through the signed, expiring URL from get_submission."""
    ctx = AppContext.of(request)
    key = request.match_info["key"]
    if not isinstance(ctx.storage, LocalStorage):
        raise web.HTTPNotFound(text="Xqueue 404 error.")
    if not check_signature(ctx.signing_key, key, request.query.get("expires", ""),
                           request.query.get("signature", "")):
        raise web.HTTPForbidden(text="invalid or expired file link")
    path = ctx.storage.path(key)
    if not path.exists():
        raise web.HTTPNotFound(text="Xqueue 404 error.")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})
