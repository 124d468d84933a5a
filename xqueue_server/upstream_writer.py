"""Writing an import plan (``upstream_import.py``) into our database, in one transaction.

``existing`` reads what is already here (for the plan and for dry runs: read-only); ``apply`` writes
the plan. Imports take a lock and check again, in the same transaction, which submissions are here
already, so two imports running at the same time still import each thing once (accounts and
queues are inserted with ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .db import SQL_DIR, Database, load_queries
from .upstream_import import Existing, ImportPlan, Skipped, UpstreamData

QUERIES = load_queries((SQL_DIR / "upstream_import.sql").read_text())


@dataclass(frozen=True)
class Applied:
    accounts: int
    queues: int
    submissions: int
    callbacks: int
    unused_files: list[str]  # storage keys fetched for submissions another run imported meanwhile


async def existing(db: Database, data: UpstreamData) -> Existing:
    usernames = [u.username for u in data.users]
    headers = list({s.xqueue_header for s in data.submissions})
    urls = list({s.lms_callback_url for s in data.submissions})
    pool = db.pool
    return Existing(
        usernames=frozenset(r[0] for r in await pool.fetch(QUERIES["import_existing_usernames"], usernames)),
        queues=frozenset(r[0] for r in await pool.fetch(QUERIES["import_existing_queues"])),
        submissions=frozenset((r[0], r[1]) for r in await pool.fetch(QUERIES["import_existing_submissions"],
                                                                     headers)),
        pending_callbacks=frozenset((r[0], r[1]) for r in await pool.fetch(QUERIES["import_pending_callbacks"],
                                                                          urls)),
    )


async def apply(db: Database, plan: ImportPlan) -> Applied:
    """Write the plan; afterwards ``plan`` lists only what this run wrote (what another run wrote in
    the meantime moves to ``plan.unchanged``), so the report tells the truth."""
    accounts, queues, submissions = [], [], []
    callbacks = 0
    unused: list[str] = []
    async with db.transaction() as tx:
        conn = tx.pool
        await conn.execute(QUERIES["import_lock"])
        # Checked again under the lock, in one scan: another import may have run since the plan was made.
        present = {(r[0], r[1]) for r in await conn.fetch(QUERIES["import_existing_submissions"],
                                                          list({s.xqueue_header for s in plan.submissions}))}
        for account in plan.accounts:
            if await conn.fetchval(QUERIES["import_account"], account.username, account.password_hash,
                                   account.is_admin, account.is_active) is not None:
                accounts.append(account)
            else:
                plan.unchanged.append(Skipped("account", account.username, "created meanwhile"))
        for name in plan.queues:
            if await conn.fetchval(QUERIES["import_queue"], name) is not None:
                queues.append(name)
        for sub in plan.submissions:  # in upstream's arrival order: our ids are the queue order
            if (sub.queue_name, sub.xqueue_header) in present:
                unused.extend(sub.files.values())
                plan.unchanged.append(Skipped("submission", f"#{sub.upstream_id} ({sub.queue_name})",
                                              "imported meanwhile"))
                continue
            present.add((sub.queue_name, sub.xqueue_header))
            row = await conn.fetchrow(
                QUERIES["import_submission"], sub.queue_name, sub.requester_id, sub.lms_callback_url,
                sub.xqueue_header, sub.xqueue_body, sub.arrival_time, sub.state, sub.grader_reply, sub.return_time,
                json.dumps(sub.files),
            )
            submissions.append(sub)
            callbacks += row["callbacks"]
        await conn.fetchval(QUERIES["import_notify_queues"], sorted({s.queue_name for s in submissions}))
        if callbacks:
            await conn.fetchval(QUERIES["import_notify_callbacks"])
    plan.accounts, plan.queues, plan.submissions = accounts, queues, submissions
    return Applied(len(accounts), len(queues), len(submissions), callbacks, unused)


async def rehash_password(db: Database, account_id: int, verified_hash: str, new_hash: str) -> bool:
    """Replace an imported Django hash by ours after a successful login (see ``auth.Authenticator``)."""
    return await db.pool.fetchval(QUERIES["rehash_password"], account_id, verified_hash, new_hash) is not None
