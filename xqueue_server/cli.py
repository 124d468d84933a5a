"""``xqueue-admin``: accounts, queues, migrations and dead-lettered callbacks, straight on the database.

The database URL comes from ``XQUEUE_DATABASE_URL`` (or the config file); without one, the URL of the
local throwaway cluster started by ``xqueue-server`` / ``make run`` (``.local/database_url``) is used.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from .app import import_users
from .auth import digest_secret, hash_for, hash_password, new_secret
from .config import ConfigError, load_settings
from .db import Database


def database_url() -> str:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    if settings.database_url:
        return settings.database_url
    local = Path(settings.local_state_dir) / "database_url"
    if local.exists():
        return local.read_text().strip()
    raise SystemExit("no database: set XQUEUE_DATABASE_URL (or start the local server with `make run`)")


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
    if len(password) < 8:
        raise SystemExit("passwords must have at least 8 characters")
    return password


def split_queues(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [q for q in (part.strip() for part in value.split(",")) if q]


async def cmd_migrate(db: Database, args: argparse.Namespace) -> int:
    applied = await db.migrate()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    print(f"schema version: {await db.schema_version()}")
    return 0


async def cmd_create_user(db: Database, args: argparse.Namespace) -> int:
    # The stored hash is kept when the password is unchanged: re-running the command (the Helm admin
    # Job does at every upgrade) must not end the account's sessions.
    password_hash = await hash_for(db, args.username, read_password(args))
    created = await db.upsert_account(
        args.username, password_hash, args.admin, split_queues(args.pull_queues), split_queues(args.submit_queues)
    )
    print(f"{'created' if created else 'updated'} account {args.username}")
    return 0


async def cmd_set_password(db: Database, args: argparse.Namespace) -> int:
    password_hash = await asyncio.to_thread(hash_password, read_password(args))
    if not await db.set_password(args.username, password_hash):
        print(f"no account {args.username}", file=sys.stderr)
        return 1
    print(f"password of {args.username} reset; its sessions are ended")
    return 0


async def cmd_set_active(db: Database, args: argparse.Namespace) -> int:
    active = args.command == "activate-user"
    if not await db.set_account_active(args.username, active):
        print(f"no account {args.username}", file=sys.stderr)
        return 1
    print(f"account {args.username} {'activated' if active else 'deactivated; its sessions are ended'}")
    return 0


async def cmd_import_users(db: Database, args: argparse.Namespace) -> int:
    try:
        names = await import_users(db, Path(args.file))
    except (OSError, ValueError) as exc:
        print(f"cannot import {args.file}: {exc}", file=sys.stderr)
        return 1
    print(f"imported {len(names)} account(s): {', '.join(names)}")
    return 0


async def cmd_delete_user(db: Database, args: argparse.Namespace) -> int:
    if not await db.delete_account(args.username):
        print(f"no account {args.username}", file=sys.stderr)
        return 1
    print(f"deleted account {args.username}")
    return 0


async def cmd_list_users(db: Database, args: argparse.Namespace) -> int:
    for row in await db.list_accounts():
        pull = "all" if row["pull_queues"] is None else ",".join(row["pull_queues"]) or "none"
        submit = "all" if row["submit_queues"] is None else ",".join(row["submit_queues"]) or "none"
        print(f"{row['username']:<30} admin={str(row['is_admin']).lower():<5} pull={pull} submit={submit}")
    return 0


async def cmd_create_token(db: Database, args: argparse.Namespace) -> int:
    found = await db.get_account_with_hash(args.username)
    if found is None:
        print(f"no account {args.username}", file=sys.stderr)
        return 1
    secret = new_secret()
    token_id = await db.create_token(digest_secret(secret), found[0].id, split_queues(args.pull_queues),
                                     split_queues(args.submit_queues), args.ttl_seconds)
    print(secret)  # alone on stdout, for scripts
    print(f"token id {token_id} (revoke with: xqueue-admin revoke-token {token_id})", file=sys.stderr)
    return 0


async def cmd_list_tokens(db: Database, args: argparse.Namespace) -> int:
    rows = await db.list_tokens(args.username)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    if not rows:
        print("no API tokens")

    def when(value: Any) -> str:
        return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"

    for row in rows:
        pull = "all" if row["pull_queues"] is None else ",".join(row["pull_queues"]) or "none"
        submit = "all" if row["submit_queues"] is None else ",".join(row["submit_queues"]) or "none"
        print(f"#{row['id']} user={row['username']} pull={pull} submit={submit} created={when(row['created_at'])} "
              f"expires={when(row['expires_at'])}{' (expired)' if row['expired'] else ''} "
              f"last_used={when(row['last_used_at'])}")
    return 0


async def cmd_revoke_token(db: Database, args: argparse.Namespace) -> int:
    if not args.ids and not args.user:
        print("give token ids or --user", file=sys.stderr)
        return 2
    revoked = await db.revoke_tokens(args.ids, args.user)
    print(f"revoked {len(revoked)} token(s)" + (f": {', '.join(f'#{i}' for i in revoked)}" if revoked else ""))
    missing = sorted(set(args.ids) - set(revoked))
    if missing:
        print(f"no token {', '.join(f'#{i}' for i in missing)}", file=sys.stderr)
        return 1
    return 0


async def cmd_create_queue(db: Database, args: argparse.Namespace) -> int:
    for name in args.names:
        created = await db.create_queue(name)
        print(f"{'created' if created else 'exists '} {name}")
    return 0


async def cmd_list_queues(db: Database, args: argparse.Namespace) -> int:
    print(f"{'queue':<30} {'queued':>8} {'in_flight':>10} {'oldest_s':>10}")
    for row in await db.queue_stats():
        oldest = row["oldest_queued_age_seconds"]
        print(f"{row['name']:<30} {row['queued']:>8} {row['in_flight']:>10} "
              f"{'-' if oldest is None else f'{oldest:.1f}':>10}")
    return 0


async def cmd_delete_queue(db: Database, args: argparse.Namespace) -> int:
    if not await db.delete_queue(args.name):
        print(f"no queue {args.name}", file=sys.stderr)
        return 1
    print(f"deleted queue {args.name}")
    return 0


async def cmd_dead_letters(db: Database, args: argparse.Namespace) -> int:
    rows = await db.list_dead_callbacks(args.limit)
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    if not rows:
        print("no dead-lettered callbacks")
    for row in rows:
        print(f"#{row['id']} submission={row['submission_id']} kind={row['kind']} attempts={row['attempts']} "
              f"since={row['created_at']:%Y-%m-%d %H:%M:%S} url={row['url']} error={row['last_error']}")
    return 0


async def cmd_redeliver(db: Database, args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        print("give callback ids or --all", file=sys.stderr)
        return 2
    ids = await db.redeliver_callbacks(None if args.all else args.ids)
    print(f"re-queued {len(ids)} callback(s) for delivery")
    return 0


async def cmd_import_xqueue(db: Database, args: argparse.Namespace) -> int:
    # Imported here: the upstream drivers matter to this command only.
    from . import upstream_import, upstream_source, upstream_writer

    url = args.source or os.environ.get("XQUEUE_UPSTREAM_DATABASE_URL", "")
    if not url:
        print("give the upstream database URL (or set XQUEUE_UPSTREAM_DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        data = await upstream_source.read_upstream(url)
    except upstream_source.SourceError as exc:
        print(f"import-xqueue: {exc}", file=sys.stderr)
        return 1
    extra = [q for value in args.queue for q in split_queues(value) or ()]
    plan = upstream_import.plan_import(data, await upstream_writer.existing(db, data), extra,
                                       admins=not args.no_admins, fetch_files=args.fetch_files)
    if not args.dry_run:
        storage, fetched = None, []
        if args.fetch_files:
            from . import upstream_files
            from .storage import discard_files, make_storage

            settings = load_settings()
            storage = make_storage(settings, await db.get_secret("file_url_signing_key") or "")
            stored, failed = await upstream_files.fetch_files(
                plan.submissions, storage, base_url=args.files_base_url, max_bytes=settings.max_file_bytes)
            upstream_import.with_fetched_files(plan, stored, failed)
            fetched = [key for files in stored.values() for key in files.values()]
        try:
            applied = await upstream_writer.apply(db, plan)
        except BaseException:
            if storage is not None:  # the rows naming them were rolled back
                await asyncio.shield(discard_files(storage, fetched))
            raise
        if storage is not None:
            await discard_files(storage, applied.unused_files)
    if args.json:
        print(json.dumps(upstream_import.report_json(plan, dry_run=args.dry_run), indent=2))
    else:
        print(upstream_import.render_report(plan, dry_run=args.dry_run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xqueue-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wait-seconds", type=float, default=0.0, metavar="N",
                        help="keep retrying for up to N seconds while the database is not reachable yet "
                             "(for migration and account steps that may start before PostgreSQL)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[Database, argparse.Namespace], Awaitable[int]], help_text: str) -> Any:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    add("migrate", cmd_migrate, "apply pending schema migrations")
    for name, func, help_text in (("create-user", cmd_create_user, "create or update an account"),
                                  ("set-password", cmd_set_password, "reset an account's password")):
        command = add(name, func, help_text)
        command.add_argument("username")
        command.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        if name == "create-user":
            command.add_argument("--admin", action="store_true", help="may use the admin API")
            command.add_argument("--pull-queues", help="comma-separated queues it may pull (default: all)")
            command.add_argument("--submit-queues", help="comma-separated queues it may submit to (default: all)")
    add("import-users", cmd_import_users, "create/reset accounts from a {username: password} YAML file"
        ).add_argument("file")
    add("delete-user", cmd_delete_user, "delete an account (its sessions and tokens with it)").add_argument("username")
    add("deactivate-user", cmd_set_active, "refuse an account's logins, sessions and tokens (kept for later)"
        ).add_argument("username")
    add("activate-user", cmd_set_active, "undo deactivate-user").add_argument("username")
    add("list-users", cmd_list_users, "list accounts and their queue permissions")
    token = add("create-token", cmd_create_token, "print a new API token (Authorization: Bearer) for an account")
    token.add_argument("username")
    token.add_argument("--pull-queues")
    token.add_argument("--submit-queues")
    token.add_argument("--ttl-seconds", type=float)
    tokens = add("list-tokens", cmd_list_tokens, "list API tokens (metadata only; secrets are never stored)")
    tokens.add_argument("--username", help="only the tokens of this account")
    tokens.add_argument("--json", action="store_true")
    revoke = add("revoke-token", cmd_revoke_token, "revoke API tokens at once, on every replica")
    revoke.add_argument("ids", nargs="*", type=int)
    revoke.add_argument("--user", help="revoke every token of this account")
    add("create-queue", cmd_create_queue, "create queues").add_argument("names", nargs="+")
    add("list-queues", cmd_list_queues, "list queues with their depth")
    add("delete-queue", cmd_delete_queue, "delete a queue").add_argument("name")
    dead = add("dead-letters", cmd_dead_letters, "list callbacks that could not be delivered")
    dead.add_argument("--limit", type=int, default=100)
    dead.add_argument("--json", action="store_true")
    redeliver = add("redeliver", cmd_redeliver, "put dead-lettered callbacks back in the outbox")
    redeliver.add_argument("ids", nargs="*", type=int)
    redeliver.add_argument("--all", action="store_true")
    upstream = add("import-xqueue", cmd_import_xqueue,
                   "import accounts (with their passwords), queues and unfinished submissions from an upstream "
                   "XQueue database; safe to repeat")
    upstream.add_argument("source", nargs="?", help="mysql://user:pass@host/db (also ?unix_socket=PATH), "
                          "postgresql://..., sqlite:////absolute/path; default: $XQUEUE_UPSTREAM_DATABASE_URL")
    upstream.add_argument("--dry-run", action="store_true", help="print what would be imported; write nothing")
    upstream.add_argument("--queue", action="append", default=[], metavar="NAMES",
                          help="also create these queues (comma-separated; upstream's XQUEUES setting)")
    upstream.add_argument("--no-admins", action="store_true",
                          help="do not make upstream superusers admins here")
    upstream.add_argument("--fetch-files", action="store_true",
                          help="copy submitted files from upstream's file URLs into this server's storage "
                               "(else submissions with files are skipped)")
    upstream.add_argument("--files-base-url", metavar="URL",
                          help="where upstream served relative file URLs (its MEDIA_URL host), e.g. "
                               "https://xqueue.example.org/")
    upstream.add_argument("--json", action="store_true", help="the report as JSON")
    return parser


async def run(args: argparse.Namespace, url: str) -> int:
    db = await Database.connect(url, min_size=1, max_size=2, wait_seconds=args.wait_seconds)
    try:
        if args.command != "migrate":
            await db.migrate()
        return await args.func(db, args)
    finally:
        await db.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="xqueue-admin: %(message)s")
    try:
        code = asyncio.run(run(args, database_url()))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # A clear line for the operator, not a traceback (the URL, which holds the password, is not printed).
        raise SystemExit(f"xqueue-admin: database error: {type(exc).__name__}: {exc}") from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
