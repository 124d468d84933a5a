"""The application factory: builds the aiohttp app and owns its resources (database pool, LISTEN
connection, outbox worker, housekeeping) through ``cleanup_ctx``, so tests run the production app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from aiohttp import web

from . import admin_api, classic_api, ops_api, status_api
from .abuse import server_options
from .auth import Authenticator, hash_for
from .config import Settings
from .context import CONTEXT_KEY, AppContext
from .db import Database
from .delivery import DELIVERER_KEY, CallbackDeliverer
from .housekeeping import Housekeeper
from .logs import error_fields
from .metrics import Metrics
from .middleware import request_middleware
from .outage import is_unavailable
from .ratelimit import LoginLimits
from .storage import make_storage
from .waiters import QueueWaiters

log = logging.getLogger("xqueue.app")


def login_limits(settings: Settings) -> LoginLimits:
    return LoginLimits(
        window_seconds=settings.login_failure_window_seconds,
        per_pair=settings.login_max_failures_per_account_address,
        per_address=settings.login_max_failures_per_address,
        per_account=settings.login_max_failures_per_account,
    )


def _count_slow_request(app: web.Application) -> None:
    context = app.get(CONTEXT_KEY)
    if context is not None:
        context.metrics.slow_requests.inc()


async def seed_from_settings(db: Database, settings: Settings) -> None:
    """Queues and users named in the configuration exist after start-up (upstream XQUEUES / USERS)."""
    for name in settings.queues:
        await db.create_queue(name)
    if settings.users_file:
        await import_users(db, Path(settings.users_file))


async def import_users(db: Database, path: Path) -> list[str]:
    """Create or reset the accounts of a ``{username: password}`` YAML file, like ``update_users``."""
    users = yaml.safe_load(await asyncio.to_thread(path.read_text)) or {}
    if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
        raise ValueError(f"{path} must map usernames to passwords")
    for username, password in users.items():
        found = await db.get_account_with_hash(username)
        # Every replica imports the file at start-up: an unchanged password must not end the sessions
        # a new hash (set_password) would end.
        password_hash = await hash_for(db, username, password)
        if found is None:
            await db.upsert_account(username, password_hash)
        elif password_hash != found[1]:
            await db.set_password(username, password_hash)
    return list(users)


def create_app(settings: Settings) -> web.Application:
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url (the CLI starts a local PostgreSQL when unset)")
    app = web.Application(
        # Last resort, append-slash redirect, edge checks and body deadline (slowloris), as one.
        middlewares=[request_middleware(settings.body_timeout_seconds, lambda: _count_slow_request(app))],
        client_max_size=settings.max_request_bytes + 1_000_000,
        handler_args=server_options(settings.header_timeout_seconds),
    )
    app.add_routes(classic_api.routes)
    app.add_routes(admin_api.routes)
    app.add_routes(ops_api.routes)
    app.add_routes(status_api.routes)
    app.cleanup_ctx.append(lambda app: _lifecycle(app, settings))
    return app


async def _lifecycle(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    assert settings.database_url
    db = await Database.connect(settings.database_url, settings.db_pool_min, settings.db_pool_max)
    tasks: list[asyncio.Task[None]] = []
    try:
        applied = await db.migrate()
        if applied:
            log.info("schema migrations applied", extra={"fields": {"migrations": applied}})
        await seed_from_settings(db, settings)
        signing_key = await db.get_secret("file_url_signing_key")
        assert signing_key, "migration 0001 creates the signing key"
        metrics = Metrics()
        storage = make_storage(settings, signing_key)
        waiters = QueueWaiters()
        ctx = AppContext(
            settings=settings,
            db=db,
            auth=Authenticator(db, settings.session_max_age_seconds, login_limits(settings), metrics),
            storage=storage,
            metrics=metrics,
            waiters=waiters,
            signing_key=signing_key,
        )
        app[CONTEXT_KEY] = ctx
        deliverer = CallbackDeliverer(db, settings, metrics)
        app[DELIVERER_KEY] = deliverer
        housekeeper = Housekeeper(db, settings, metrics, storage)
        tasks = [
            asyncio.create_task(_listen_forever(db, waiters, deliverer), name="xqueue-listen"),
            asyncio.create_task(deliverer.run(), name="xqueue-deliver"),
            asyncio.create_task(housekeeper.run_sweeper(), name="xqueue-sweep"),
            asyncio.create_task(housekeeper.run_housekeeping(), name="xqueue-housekeeping"),
        ]
        log.info("xqueue server ready", extra={"fields": {"storage": settings.storage}})
        yield
        waiters.stop()
        deliverer.stop()
        # Let the outbox finish what it claimed (bounded by the callback timeout) before cancelling.
        await asyncio.wait([tasks[1]], timeout=settings.callback_timeout_seconds + 2)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await db.close()


async def _listen_forever(db: Database, waiters: QueueWaiters, deliverer: CallbackDeliverer) -> None:
    """Keep one LISTEN connection open; reconnect with capped backoff if the database goes away."""
    delay = 0.5
    while True:
        try:
            async with db.listen(waiters.notify, deliverer.notify) as conn:
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                # Sessions may be remembered only while every change to them is heard (db.CredentialsCache).
                db.credentials.enable(True)
                delay = 0.5
                # Work that arrived while we were not listening is picked up now.
                waiters.notify_all()
                deliverer.notify()
                await lost.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_unavailable(exc, connecting=True):
                db.health.failed(exc)  # logged once per outage, not once per reconnect attempt
            else:
                log.warning("LISTEN connection lost; reconnecting", extra={"fields": error_fields(exc)})
        finally:
            db.credentials.enable(False)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
