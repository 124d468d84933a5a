"""The seven classic XQueue endpoints, wire-compatible with upstream (xqueue-protocol.md §2, §11).

Handlers are thin: parse, call the database or storage, shape the envelope. Every application error
is HTTP 200 with ``return_code`` 1, as upstream; unauthenticated calls get upstream's 302 to login.
The shared start of an endpoint (login, HTTP method, the envelope for errors) is ``classic_endpoint``:
a handler raises ``protocol.ProtocolError`` and the caller gets the failure envelope.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from urllib.parse import quote

from aiohttp import web

from . import handout
from . import protocol as p
from .auth import (
    LoginThrottled,
    can_pull,
    can_submit,
    current_account,
    pull_scope,
    set_session_cookie,
    visible_queues,
)
from .context import AppContext, client_ip
from .db import Account
from .delivery import DELIVERER_KEY
from .ratelimit import retry_after_header
from .storage import saving_files
from .uploads import FormError, read_form, read_submit_form, small_form_limits

log = logging.getLogger("xqueue.classic")
routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.Response]]
AccountHandler = Callable[[web.Request, AppContext, Account], Awaitable[web.Response]]


def reply(payload: dict[str, Any]) -> web.Response:
    return web.json_response(payload)


def redirect_to_login(request: web.Request) -> NoReturn:
    # Like Django's login_required: the original path and query go into ?next=, '/' unescaped.
    next_value = quote(request.path_qs, safe="/")
    # Set the header directly: yarl would normalise %3F back to '?' in the query.
    redirect = web.HTTPFound(location="/xqueue/login/")
    redirect.headers["Location"] = f"/xqueue/login/?next={next_value}"
    raise redirect


def envelope_errors(handler: Handler) -> Handler:
    """Answer a ``ProtocolError`` raised by ``handler`` with the failure envelope (HTTP 200, as upstream)."""

    @functools.wraps(handler)
    async def answered(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except p.ProtocolError as exc:
            return reply(p.failure(exc.message))

    return answered


def classic_endpoint(method: str, wrong_method: str) -> Callable[[AccountHandler], Handler]:
    """The preamble of the endpoints that need a login: no account is upstream's redirect to login,
    another HTTP method than ``method`` is the failure ``wrong_method``; then the handler runs with the
    context and the caller's account, its ``ProtocolError`` answered like those (``envelope_errors``)."""

    def wrap(handler: AccountHandler) -> Handler:
        @functools.wraps(handler)
        @envelope_errors
        async def endpoint(request: web.Request) -> web.Response:
            account = await current_account(request)
            if account is None:
                redirect_to_login(request)
            if request.method != method:
                raise p.ProtocolError(wrong_method)
            return await handler(request, AppContext.of(request), account)

        return endpoint

    return wrap


def queue_param(request: web.Request, endpoint: str) -> str:
    """The ``queue_name`` parameter every GET endpoint needs."""
    queue_name = request.query.get("queue_name")
    if queue_name is None:
        raise p.ProtocolError(p.missing_queue_param(endpoint))
    return queue_name


@routes.route("*", "/xqueue/login/")
@envelope_errors
async def login(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    if request.method != "POST":
        response = reply(p.failure(p.LOGIN_REQUIRED))
        # Newer xqueue-watchers GET this page first to pick up a CSRF cookie; harmless for others.
        response.set_cookie("csrftoken", ctx.csrf_token(), samesite="Lax", path="/")
        return response
    try:
        form = (await read_form(request, ("username", "password"), small_form_limits(ctx.settings))).fields
    except FormError as exc:
        raise p.ProtocolError(f"{p.INSUFFICIENT_LOGIN_INFO}: {exc.message}") from None
    username, password = form.get("username"), form.get("password")
    # Upstream answered 500 when only the username was missing; both missing fields get this message.
    if not isinstance(username, str) or not isinstance(password, str):
        raise p.ProtocolError(p.INSUFFICIENT_LOGIN_INFO)
    try:
        account = await ctx.auth.check_password(username, password, client_ip(request))
    except LoginThrottled as exc:
        # An application error like the others (HTTP 200, so the LMS shows the message), plus Retry-After.
        log.info("login throttled", extra={"fields": {"username": username[:128], "ip": client_ip(request)}})
        response = reply(p.failure(exc.message))
        response.headers["Retry-After"] = retry_after_header(exc.retry_after)
        return response
    if account is None:
        log.info("login failed", extra={"fields": {"username": username[:128], "ip": client_ip(request)}})
        raise p.ProtocolError(p.INCORRECT_CREDENTIALS)
    secret = await ctx.auth.login(account)
    if secret is None:  # deleted between the password check and the session insert
        raise p.ProtocolError(p.INCORRECT_CREDENTIALS)
    response = reply(p.success(p.LOGGED_IN))
    set_session_cookie(response, secret, ctx.settings)
    response.set_cookie("csrftoken", ctx.csrf_token(), samesite="Lax", path="/")
    log.info("login", extra={"fields": {"username": account.username, "ip": client_ip(request)}})
    return response


@routes.route("*", "/xqueue/logout/")
async def logout(request: web.Request) -> web.Response:
    ctx = AppContext.of(request)
    secret = request.cookies.get("sessionid")
    if secret:
        await ctx.auth.logout(secret)
    response = reply(p.success(p.GOODBYE))
    response.del_cookie("sessionid", path="/")
    return response


@routes.route("*", "/xqueue/status/")
async def status(request: web.Request) -> web.Response:
    return reply(p.success(p.STATUS_OK))


NO_SUBMIT_RIGHTS = "This account may not submit to any queue"


class QueueRefused(Exception):
    def __init__(self, queue: str) -> None:
        super().__init__(queue)
        self.queue = queue


def queue_name_of(header: str) -> str | None:
    """The queue an xqueue_header names, coerced like ``protocol.parse_lms_submission``; None if it names none
    (the full validation comes later)."""
    try:
        decoded = json.loads(header)
    except (ValueError, RecursionError):
        return None
    if not isinstance(decoded, dict) or isinstance(decoded.get("queue_name"), dict | list | None):
        return None
    return str(decoded["queue_name"])


@routes.route("*", "/xqueue/submit/")
@classic_endpoint("POST", p.SUBMIT_NOT_POST)
async def submit(request: web.Request, ctx: AppContext, account: Account) -> web.Response:
    if not account.is_admin and account.submit_queues == ():
        raise p.ProtocolError(NO_SUBMIT_RIGHTS)  # before a byte of a possibly large body is read

    async def check_queue(name: str, text: str) -> None:
        # The LMS sends xqueue_header before the files: a queue this account may not use (or that
        # does not exist) is refused before the files are read.
        queue = queue_name_of(text) if name == "xqueue_header" else None
        if queue is not None and not (can_submit(account, queue) and await ctx.queue_exists(queue)):
            raise QueueRefused(queue)

    try:
        form = await read_submit_form(request, ctx.settings, check_queue)
    except QueueRefused as exc:
        raise p.ProtocolError(p.queue_not_found(exc.queue)) from None
    except FormError as exc:
        raise p.ProtocolError(exc.message if exc.limit else f"{p.SUBMIT_INVALID_FORMAT}: {exc.message}") from None
    try:
        parsed = p.parse_lms_submission(
            form.fields.get("xqueue_header"),
            form.fields.get("xqueue_body"),
            ctx.settings.max_header_bytes,
            ctx.settings.max_body_bytes,
        )
    except p.ProtocolError as exc:
        log.error("Invalid queue submission from LMS", extra={"fields": {
            "lms_ip": client_ip(request), "reason": exc.message}})
        raise
    # A queue the caller may not use answers exactly like a missing one (nothing learnt by probing).
    if not can_submit(account, parsed.queue_name) or not await ctx.queue_exists(parsed.queue_name):
        raise p.ProtocolError(p.queue_not_found(parsed.queue_name))
    # Files are written after the database accepted the row and before it commits (graders are
    # notified at commit), so a refused row leaves no file and a failed write leaves no row. Without
    # files the insert is a single statement and needs no transaction of its own.
    database = ctx.db.transaction() if form.files else contextlib.nullcontext(ctx.db)
    async with database as tx, saving_files(ctx.storage, form.files) as stored:
        submission_id, queue_length, superseded = await tx.insert_submission(
            parsed.queue_name, parsed.callback_url, parsed.xqueue_header, parsed.xqueue_body, stored,
            client_ip(request),
        )
    ctx.metrics.submissions.labels(parsed.queue_name).inc()
    if superseded:
        ctx.metrics.superseded.labels(parsed.queue_name).inc(superseded)
    # DEBUG: the one INFO line per submission is "callback delivered" (delivery.py), which carries
    # the ids; these per-step lines cost ~1% of a cycle's CPU each at production level.
    log.debug("submission queued", extra={"fields": {
        "submission_id": submission_id, "queue": parsed.queue_name, "files": len(stored),
        "superseded": superseded, "account": account.username}})
    return reply(p.success(str(queue_length)))


@routes.route("*", "/xqueue/get_queuelen/")
@classic_endpoint("GET", "'get_queuelen' must use HTTP GET")
async def get_queuelen(request: web.Request, ctx: AppContext, account: Account) -> web.Response:
    queue_name = queue_param(request, "get_queuelen")
    if not (can_pull(account, queue_name) or can_submit(account, queue_name)) or not await ctx.queue_exists(queue_name):
        names = visible_queues(account, await ctx.db.list_queue_names())
        raise p.ProtocolError(p.valid_queue_names(names))
    return reply(p.success(await ctx.db.queue_length(queue_name)))


@routes.route("*", "/xqueue/get_submission/")
@classic_endpoint("GET", "'get_submission' must use HTTP GET")
async def get_submission(request: web.Request, ctx: AppContext, account: Account) -> web.Response:
    queue_name = queue_param(request, "get_submission")
    wait = p.parse_positive_number(request.query.get("wait"), "wait", ctx.settings.long_poll_max_seconds)
    bulk = p.parse_positive_number(request.query.get("max"), "max", ctx.settings.bulk_max)
    if not can_pull(account, queue_name) or not await ctx.queue_exists(queue_name):
        raise p.ProtocolError(p.queue_not_found(queue_name))  # forbidden answers like unknown
    if bulk is not None and (bulk < 1 or bulk != int(bulk)):
        raise p.ProtocolError("parameter 'max' must be a whole number of at least 1")
    limit = int(bulk) if bulk is not None else 1
    deadline = time.monotonic() + (wait or 0.0)
    grader_id = client_ip(request)
    woken = False
    while True:
        if handout.client_gone(request):
            # The grader left (e.g. its pod stopped): claim nothing for it, and pass on a wake-up it took.
            if woken:
                ctx.waiters.notify(queue_name)
            return reply(p.failure(p.queue_empty(queue_name)))
        claimed = await ctx.db.claim_submissions(
            queue_name, limit, ctx.settings.lease_seconds, ctx.settings.max_pulls, grader_id
        )
        remaining = deadline - time.monotonic()
        if claimed or remaining <= 0 or ctx.waiters.stopping.is_set():
            break
        # Woken by NOTIFY when work arrives; re-check every few seconds anyway for expired leases.
        woken = await ctx.waiters.wait(queue_name, min(remaining, ctx.settings.long_poll_recheck_seconds),
                                       lambda: handout.client_gone(request))
    if not claimed:
        ctx.metrics.empty_pulls.labels(queue_name).inc()
        return reply(p.failure(p.queue_empty(queue_name)))
    if ctx.waiters.has_waiters(queue_name):
        # Submissions to a non-empty queue are not announced (insert_submission): there may be more
        # work, so the next waiting grader looks (it waits again if there is none).
        ctx.waiters.notify(queue_name)
    try:
        base_url = ctx.public_base_url(request)
        contents = []
        for item in claimed:
            urls = {name: await ctx.storage.url(key, base_url, ctx.settings.file_url_ttl_seconds)
                    for name, key in item.files.items()}
            contents.append(p.submission_content(item.id, item.pullkey, item.xqueue_body, urls))
        response = reply(p.success(json.dumps(contents[0] if bulk is None else contents)))
        delivered = await handout.send(request, response)  # written here, so a failed write is seen
    except BaseException:  # cancelled (server stopping) or a storage error: nobody got these claims
        await handout.release(ctx.db, ctx.metrics, queue_name, claimed)
        raise
    if not delivered:
        await handout.release(ctx.db, ctx.metrics, queue_name, claimed)
        return response
    for item in claimed:
        ctx.metrics.pulls.labels(queue_name).inc()
        if item.was_expired:
            ctx.metrics.lease_expiries.labels(queue_name).inc()
    log.debug("submissions pulled", extra={"fields": {
        "queue": queue_name, "ids": [c.id for c in claimed], "grader": grader_id, "account": account.username}})
    return response


@routes.route("*", "/xqueue/put_result/")
@classic_endpoint("POST", p.PUT_NOT_POST)
async def put_result(request: web.Request, ctx: AppContext, account: Account) -> web.Response:
    try:
        form = (await read_form(request, ("xqueue_header", "xqueue_body", "results"),
                                small_form_limits(ctx.settings))).fields
    except FormError as exc:
        raise p.ProtocolError(f"{p.INCORRECT_REPLY_FORMAT}: {exc.message}") from None
    bulk = form.get("results")
    if isinstance(bulk, str):
        items = p.parse_grader_bulk_results(bulk)
        if len(items) > ctx.settings.bulk_max:
            raise p.ProtocolError(f"{p.INCORRECT_REPLY_FORMAT}: at most {ctx.settings.bulk_max} results per call")
        outcomes = [await _record_one(request, account, header, body) for header, body in items]
        return reply(p.success(outcomes))
    return reply(await _record_one(request, account, form.get("xqueue_header"), form.get("xqueue_body")))


async def _record_one(request: web.Request, account: Account, header: Any, body: Any) -> dict[str, Any]:
    ctx = AppContext.of(request)
    try:
        parsed = p.parse_grader_reply(header, body)
    except p.ProtocolError as exc:
        ctx.metrics.results.labels("invalid").inc()
        return p.failure(exc.message)
    # Only submissions of queues the caller may pull exist for it: a foreign one answers like a missing one.
    deliverer = request.app[DELIVERER_KEY]
    outcome, callback = await ctx.db.record_result(parsed.submission_id, parsed.submission_key, parsed.xqueue_body,
                                                   pull_scope(account), deliverer.inline_claim_seconds())
    if callback is not None:
        deliverer.deliver_now(callback)  # the first attempt starts now; the grader's reply does not wait for it
    ctx.metrics.results.labels(outcome).inc()
    if outcome in ("recorded", "duplicate"):
        log.debug("result recorded", extra={"fields": {"submission_id": parsed.submission_id, "outcome": outcome}})
        return p.success("")
    if outcome == "missing":
        return p.failure(p.SUBMISSION_DOES_NOT_EXIST)
    log.info("result rejected: stale or wrong key", extra={"fields": {"submission_id": parsed.submission_id}})
    return p.failure(p.INCORRECT_KEY)
