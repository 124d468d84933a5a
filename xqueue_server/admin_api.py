"""The JSON admin API (``/api/v1``) used by administrators and the operator.

Authentication: an admin account through HTTP Basic, a Bearer token or a session. The queue-length
endpoint is also open to accounts allowed to pull that queue (a course's grader account).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .auth import can_pull, current_account, digest_secret, hash_for, new_secret
from .context import AppContext
from .uploads import FormError, read_json_object
from .validation import NAME_PATTERN, InputError, bounded_number

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.Response]]
MAX_TOKEN_TTL_SECONDS = 10 * 365 * 24 * 3600


def error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="xqueue"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def admin_only(handler: Handler) -> Handler:
    """Answer 401/403 unless the caller is an admin account."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.Response:
        account = await current_account(request)
        if account is None:
            return error(401, "authentication required")
        if not account.is_admin:
            return error(403, "admin account required")
        return await handler(request)

    return checked


async def json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The request's JSON object, checked at the edge: every string in it is storable text."""
    try:
        return await read_json_object(request, 1_000_000)
    except FormError as exc:
        return error(413 if exc.limit else 400, exc.message)


def queue_permissions(body: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """``pull_queues`` and ``submit_queues`` of a request body: lists of names, or null (unrestricted)."""
    lists = []
    for key in ("pull_queues", "submit_queues"):
        value = body.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ValueError(f"'{key}' must be a list of queue names or null")
        lists.append(value)
    return lists[0], lists[1]


@routes.get("/api/v1/queues")
@admin_only
async def list_queues(request: web.Request) -> web.Response:
    return web.json_response({"queues": await AppContext.of(request).db.queue_stats()})


@routes.put("/api/v1/queues/{name}")
@admin_only
async def create_queue(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not NAME_PATTERN.match(name):
        return error(400, "queue names are 1-128 characters: letters, digits and _ . : @ + -")
    created = await AppContext.of(request).db.create_queue(name)
    return web.json_response({"name": name, "created": created}, status=201 if created else 200)


@routes.delete("/api/v1/queues/{name}")
@admin_only
async def delete_queue(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    name = request.match_info["name"]
    if not NAME_PATTERN.match(name):
        return error(400, "queue names are 1-128 characters: letters, digits and _ . : @ + -")
    deleted = await ctx.db.delete_queue(name)
    ctx.forget_queue(name)
    return web.json_response({"name": name, "deleted": deleted})


@routes.get("/api/v1/queues/{name}/length")
async def queue_length(request: web.Request) -> web.Response:
    account = await current_account(request)
    if account is None:
        return error(401, "authentication required")
    name = request.match_info["name"]
    if not NAME_PATTERN.match(name):
        return error(400, "queue names are 1-128 characters: letters, digits and _ . : @ + -")
    db = AppContext.of(request).db
    # A queue the caller may not read answers exactly like a missing one.
    stats = await db.queue_stats(name) if can_pull(account, name) else []
    if not stats:
        return error(404, f"Queue '{name}' not found")
    row = stats[0]
    return web.json_response({
        "queue": name, "queued": row["queued"], "in_flight": row["in_flight"],
        "oldest_queued_age_seconds": row["oldest_queued_age_seconds"],
        "in_flight_by_grader": await db.in_flight_by_grader(name),
    })


@routes.put("/api/v1/users/{username}")
@admin_only
async def put_user(request: web.Request) -> web.Response:
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    username = request.match_info["username"]
    if not NAME_PATTERN.match(username):
        return error(400, "usernames are 1-128 characters: letters, digits and _ . : @ + -")
    password = body.get("password")
    if not isinstance(password, str) or not 8 <= len(password) <= 1024:
        return error(400, "'password' must be a string of 8 to 1024 characters")
    is_admin = body.get("is_admin", False)
    if not isinstance(is_admin, bool):
        return error(400, "'is_admin' must be a boolean")
    try:
        pull_queues, submit_queues = queue_permissions(body)
    except ValueError as exc:
        return error(400, str(exc))
    db = AppContext.of(request).db
    # An unchanged password keeps the stored hash, so re-provisioning does not end the account's sessions.
    password_hash = await hash_for(db, username, password)
    created = await db.upsert_account(username, password_hash, is_admin, pull_queues, submit_queues)
    return web.json_response(
        {"username": username, "created": created, "is_admin": is_admin,
         "pull_queues": pull_queues, "submit_queues": submit_queues},
        status=201 if created else 200,
    )


@routes.delete("/api/v1/users/{username}")
@admin_only
async def delete_user(request: web.Request) -> web.Response:
    username = request.match_info["username"]
    if not NAME_PATTERN.match(username):
        return error(400, "usernames are 1-128 characters: letters, digits and _ . : @ + -")
    deleted = await AppContext.of(request).db.delete_account(username)
    return web.json_response({"username": username, "deleted": deleted})


@routes.post("/api/v1/tokens")
@admin_only
async def create_token(request: web.Request) -> web.Response:
    body = await json_body(request)
    if isinstance(body, web.Response):
        return body
    ctx = AppContext.of(request)
    username = body.get("username")
    if not isinstance(username, str):
        return error(400, "'username' is required")
    ttl = body.get("ttl_seconds")
    if ttl is not None:
        try:
            ttl = bounded_number(ttl, "'ttl_seconds'", 0, MAX_TOKEN_TTL_SECONDS)
        except InputError as exc:
            return error(400, f"{exc.message} (or null)")
    try:
        pull_queues, submit_queues = queue_permissions(body)
    except ValueError as exc:
        return error(400, str(exc))
    found = await ctx.db.get_account_with_hash(username)
    if found is None:
        return error(404, f"no account '{username}'")
    secret = new_secret()
    token_id = await ctx.db.create_token(digest_secret(secret), found[0].id, pull_queues, submit_queues, ttl)
    return web.json_response({"token": secret, "id": token_id}, status=201, dumps=json.dumps)


@routes.get("/api/v1/tokens")
@admin_only
async def list_tokens(request: web.Request) -> web.Response:
    """Token metadata (never the secret), optionally of one account (``?username=``)."""
    rows = await AppContext.of(request).db.list_tokens(request.query.get("username"))
    return web.json_response({"tokens": [
        {**row, **{k: row[k] and row[k].isoformat() for k in ("created_at", "expires_at", "last_used_at")}}
        for row in rows
    ]})


@routes.delete("/api/v1/tokens/{id}")
@admin_only
async def revoke_token(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # str.isdigit alone accepts "²", int() does not
        return error(400, "token ids are whole numbers")
    revoked = await AppContext.of(request).db.revoke_tokens([int(raw)])
    return web.json_response({"id": int(raw), "revoked": bool(revoked)})
