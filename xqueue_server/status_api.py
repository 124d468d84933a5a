"""The status page's HTTP side: ``/status/`` (for course staff and ops), its login form and logout.

Who sees what: an admin sees every queue and the server-wide callback outbox; any other account sees
exactly the queues it may pull from or submit to (``auth.can_pull`` / ``auth.can_submit``), and the
queries never read another queue (sql/status.sql takes the list of names). Callers authenticate with
the session cookie of ``/xqueue/login/`` or ``/status/login/``, a Bearer token or HTTP Basic; without
credentials a browser is sent to the login form.

The page is rendered by ``status_page.render_status``; this module only gathers its data.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .auth import LoginThrottled, can_pull, can_submit, current_account, set_session_cookie
from .context import AppContext, client_ip
from .db import SQL_DIR, Account, load_queries
from .ratelimit import retry_after_header
from .status_page import (
    DeadLetter,
    GraderSeen,
    Outbox,
    QueueStatus,
    StatusPage,
    assemble_buckets,
    render_login,
    render_status,
)
from .uploads import FormError, FormLimits, read_form

QUERIES = load_queries((SQL_DIR / "status.sql").read_text())
routes = web.RouteTableDef()

WINDOW_SECONDS = 3600  # the charts cover the last hour ...
BUCKET_SECONDS = 300  # ... in 5-minute slices
GRADERS_SEEN_SECONDS = 300  # a grader that pulled within this counts as "currently pulling"
NEWEST_DEAD = 5  # dead letters listed per queue (the total is always shown)
DEFAULT_REFRESH_SECONDS = 30
MIN_REFRESH_SECONDS = 5
MAX_REFRESH_SECONDS = 3600
CSRF_COOKIE = "status_csrf"
LOGIN_LIMITS = FormLimits(max_total=16_384, max_field=4096)
# The page runs no script at all; this also keeps a markup mistake from ever executing one.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def html_response(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


def visible_names(account: Account, names: list[str]) -> list[str] | None:
    """The queues an account's status page covers; None = every queue (admins)."""
    if account.is_admin:
        return None
    return [n for n in names if can_pull(account, n) or can_submit(account, n)]


def parse_refresh(raw: str | None) -> int:
    """``?refresh=`` in whole seconds; raises ValueError with the rule for anything else."""
    if raw is None:
        return DEFAULT_REFRESH_SECONDS
    if not (raw.isascii() and raw.isdigit()) or not MIN_REFRESH_SECONDS <= int(raw) <= MAX_REFRESH_SECONDS:
        raise ValueError(f"refresh must be a whole number of seconds from {MIN_REFRESH_SECONDS} "
                         f"to {MAX_REFRESH_SECONDS}")
    return int(raw)


def logout_token(signing_key: str, session_secret: str) -> str:
    """Ties the logout form to the session it ends, so another site cannot log a user out."""
    return hmac.new(signing_key.encode(), b"status-logout\0" + session_secret.encode(), hashlib.sha256).hexdigest()


async def gather(ctx: AppContext, account: Account, refresh_seconds: int, logout: str = "") -> StatusPage:
    """Everything the page shows, read in one read-only snapshot (the numbers agree with each other)."""
    queues: list[QueueStatus] = []
    outbox: Outbox | None = None
    async with ctx.db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        scope = None if account.is_admin else visible_names(
            account, [r["name"] for r in await conn.fetch(QUERIES["queue_names"])])
        if scope is None or scope:
            summary = await conn.fetch(QUERIES["queue_summary"], scope)
            activity = await conn.fetch(QUERIES["activity"], scope, float(WINDOW_SECONDS), float(BUCKET_SECONDS))
            graders = await conn.fetch(QUERIES["graders"], scope, float(GRADERS_SEEN_SECONDS))
            dead = await conn.fetch(QUERIES["dead_letters"], scope, NEWEST_DEAD)
            queues = build_queues(summary, activity, graders, dead, ctx.waiters.waiting())
        if account.is_admin:
            row = await conn.fetchrow(QUERIES["outbox"])
            outbox = Outbox(pending=row["pending"], oldest_pending_seconds=row["oldest_pending_seconds"],
                            dead=row["dead"])
    return StatusPage(
        username=account.username, is_admin=account.is_admin, generated_at=datetime.now(UTC),
        refresh_seconds=refresh_seconds, bucket_seconds=BUCKET_SECONDS, window_seconds=WINDOW_SECONDS,
        graders_seen_seconds=GRADERS_SEEN_SECONDS, queues=tuple(queues), outbox=outbox, logout_token=logout,
    )


def build_queues(summary: list[Any], activity: list[Any], graders: list[Any], dead: list[Any],
                 waiters: dict[str, int]) -> list[QueueStatus]:
    """Join the query results by queue name (pure)."""
    buckets_of: dict[str, list[tuple[int, str, int]]] = {}
    for r in activity:
        buckets_of.setdefault(r["queue_name"], []).append((r["bucket"], r["outcome"], r["n"]))
    graders_of: dict[str, list[GraderSeen]] = {}
    for r in graders:
        graders_of.setdefault(r["queue_name"], []).append(
            GraderSeen(r["grader_id"], r["in_flight"], r["last_pull_age_seconds"]))
    dead_of: dict[str, list[DeadLetter]] = {}
    dead_total: dict[str, int] = {}
    for r in dead:
        dead_total[r["queue_name"]] = r["total"]
        dead_of.setdefault(r["queue_name"], []).append(DeadLetter(
            r["id"], r["submission_id"], r["kind"], r["attempts"], r["age_seconds"], r["last_error"] or ""))
    count = WINDOW_SECONDS // BUCKET_SECONDS
    return [
        QueueStatus(
            name=r["name"], waiting=r["waiting"], in_flight=r["in_flight"],
            oldest_waiting_seconds=r["oldest_waiting_seconds"],
            buckets=assemble_buckets(buckets_of.get(r["name"], ()), count),
            dead_letters=dead_total.get(r["name"], 0), newest_dead=tuple(dead_of.get(r["name"], ())),
            graders=tuple(graders_of.get(r["name"], ())), long_poll_waiters=waiters.get(r["name"], 0),
        )
        for r in summary
    ]


@routes.get("/status/")
async def status(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    account = await current_account(request)
    if account is None:
        raise web.HTTPFound("/status/login/", headers=SECURITY_HEADERS)
    try:
        refresh = parse_refresh(request.query.get("refresh"))
    except ValueError as exc:
        return web.Response(status=400, text=str(exc), headers=SECURITY_HEADERS)
    # A logout button only for a browser session (HTTP Basic and tokens have nothing to end).
    secret = request.cookies.get("sessionid")
    token = logout_token(ctx.signing_key, secret) if secret else ""
    return html_response(render_status(await gather(ctx, account, refresh, token)))


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})


def _login_form(message: str = "", status: int = 200, username: str = "") -> web.Response:
    token = secrets.token_urlsafe(24)
    response = html_response(render_login(message, token, username), status)
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/status/")
    return response


@routes.get("/status/login/")
async def login_form(request: web.Request) -> web.Response:
    return _login_form()


@routes.post("/status/login/")
async def login(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    try:
        fields = (await read_form(request, ("username", "password", "csrf"), LOGIN_LIMITS)).fields
    except FormError as exc:
        return _login_form(exc.message, 400)
    username, password = fields.get("username", ""), fields.get("password", "")
    expected = request.cookies.get(CSRF_COOKIE, "")
    # Double-submit check: only a form this server handed to this browser can log it in.
    if not expected or not hmac.compare_digest(expected.encode(), fields.get("csrf", "").encode()):
        return _login_form("The login form expired; please log in again.", 400, username)
    if not username or not password:
        return _login_form("Enter a username and a password.", 400, username)
    try:
        account = await ctx.auth.check_password(username, password, client_ip(request))
    except LoginThrottled as exc:
        response = _login_form(exc.message, 429, username)
        response.headers["Retry-After"] = retry_after_header(exc.retry_after)
        return response
    secret = await ctx.auth.login(account) if account is not None else None
    if secret is None:
        return _login_form("Incorrect username or password.", 403, username)
    response = redirect("/status/")
    set_session_cookie(response, secret, ctx.settings)
    response.del_cookie(CSRF_COOKIE, path="/status/")
    return response


@routes.post("/status/logout/")
async def logout(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    try:
        fields = (await read_form(request, ("token",), LOGIN_LIMITS)).fields
    except FormError as exc:
        return web.Response(status=400, text=exc.message, headers=SECURITY_HEADERS)
    secret = request.cookies.get("sessionid", "")
    given = fields.get("token", "").encode()
    if not secret or not hmac.compare_digest(logout_token(ctx.signing_key, secret).encode(), given):
        return web.Response(status=400, text="not logged in with this browser session", headers=SECURITY_HEADERS)
    await ctx.auth.logout(secret)
    response = redirect("/status/login/")
    response.del_cookie("sessionid", path="/")
    return response
