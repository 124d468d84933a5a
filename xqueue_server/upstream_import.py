"""Mapping an upstream XQueue database onto ours: which accounts, queues and submissions to import,
and what is skipped and why. Pure functions; reading upstream is ``upstream_source.py``, writing ours
is ``upstream_writer.py``.

Upstream (openedx/xqueue) keeps Django's ``auth_user`` and one ``queue_submission`` table; its queues
live in settings (``XQUEUES``), so queue names come from the submissions plus the ones named on the
command line. A submission matters while ``retired`` is false:

- no ``return_time``: waiting, or pulled/pushed to a grader that has not answered (upstream hands it
  out again after a delay). Imported as pending: a grader of ours grades it.
- a ``return_time`` with a grader reply: graded, but the LMS has not acknowledged the grade (upstream
  keeps such rows unretired to try again). Imported as answered, with its callback in our outbox.

The LMS's ``xqueue_header`` (its ``submission_key``) and the callback URL are kept verbatim, so the
LMS accepts the grade. Re-running imports nothing twice: a submission whose queue and header are
already here is skipped, so is an account whose username exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urljoin

from . import passwords
from .protocol import ProtocolError, is_absolute_http_url, parse_lms_submission
from .validation import NAME_PATTERN, InputError, check_file_name

# Our submit limits (config defaults): an imported row must be one our own submit would take.
MAX_HEADER_BYTES = 64_000
MAX_BODY_BYTES = 2_500_000
# Upstream's stand-in when a submission's {filename: URL} did not fit its column: the URL of a JSON
# document {"files": {filename: URL}, "keys": {...}}.
EXTERNAL_DICT_NAME = "URL_FOR_EXTERNAL_DICTS"
REPORT_MAX_SUBMISSIONS = 100  # listed one per line in the text report


@dataclass(frozen=True)
class UpstreamUser:
    id: int
    username: str
    password: str
    is_active: bool
    is_superuser: bool
    is_staff: bool


@dataclass(frozen=True)
class UpstreamSubmission:
    id: int
    requester_id: str
    lms_callback_url: str
    queue_name: str
    xqueue_header: str
    xqueue_body: str
    s3_urls: str
    arrival_time: datetime
    pull_time: datetime | None
    push_time: datetime | None
    return_time: datetime | None
    grader_reply: str


@dataclass(frozen=True)
class UpstreamData:
    users: list[UpstreamUser]
    submissions: list[UpstreamSubmission]  # only the unretired ones
    groups: dict[str, list[str]] = field(default_factory=dict)  # username -> Django group names


@dataclass(frozen=True)
class Existing:
    """What our database already holds, to keep the import idempotent."""

    usernames: frozenset[str] = frozenset()
    queues: frozenset[str] = frozenset()
    submissions: frozenset[tuple[str, str]] = frozenset()  # (queue_name, xqueue_header)
    pending_callbacks: frozenset[tuple[str, str]] = frozenset()  # (queue_name, lms_callback_url) pending here


@dataclass(frozen=True)
class PlannedAccount:
    username: str
    password_hash: str  # the Django hash, verified at login and then replaced by ours
    is_admin: bool
    is_active: bool


@dataclass(frozen=True)
class PlannedSubmission:
    upstream_id: int
    queue_name: str
    requester_id: str
    lms_callback_url: str
    xqueue_header: str
    xqueue_body: str
    arrival_time: datetime
    state: str  # 'pending' or 'answered'
    grader_reply: str | None
    return_time: datetime | None
    was_pulled: bool  # upstream had handed it to a grader that never answered
    file_urls: dict[str, str] = field(default_factory=dict)  # upstream's {filename: URL}, to fetch
    files: dict[str, str] = field(default_factory=dict)  # {filename: our storage key}, once fetched


@dataclass(frozen=True)
class Skipped:
    kind: str  # 'account', 'submission', 'queue', 'group'
    name: str
    reason: str


@dataclass
class ImportPlan:
    accounts: list[PlannedAccount] = field(default_factory=list)
    queues: list[str] = field(default_factory=list)
    submissions: list[PlannedSubmission] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unchanged: list[Skipped] = field(default_factory=list)  # already imported: not a problem, just counted


def as_utc(value: datetime) -> datetime:
    """Django with USE_TZ stores UTC; MySQL and SQLite give it back without a zone."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _file_urls(s3_urls: str) -> dict[str, str] | None:
    """The submission's {filename: URL}, {} for none, None when the column cannot be read."""
    text = (s3_urls or "").strip()
    if text in ("", "{}", "null"):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if value is None or value == {}:
        return {}
    return value if isinstance(value, dict) else None


def plan_accounts(users: Iterable[UpstreamUser], existing: Existing, *, admins: bool) -> tuple[
        list[PlannedAccount], list[Skipped], list[Skipped]]:
    planned: list[PlannedAccount] = []
    skipped: list[Skipped] = []
    unchanged: list[Skipped] = []
    for user in users:
        if user.username in existing.usernames:
            # Never overwrite an account of ours: its password may have been set here since.
            unchanged.append(Skipped("account", user.username, "an account with this name exists already"))
            continue
        if not user.username or len(user.username) > 256 or "\x00" in user.username:
            skipped.append(Skipped("account", user.username, "username cannot be stored"))
            continue
        reason = passwords.unsupported_reason(user.password)
        if reason is not None:
            skipped.append(Skipped("account", user.username,
                                   f"{reason}; create it with `xqueue-admin create-user {user.username}`"))
            continue
        # Upstream's superusers ran its Django admin: the nearest thing here is the admin API.
        planned.append(PlannedAccount(user.username, user.password, admins and user.is_superuser, user.is_active))
    return planned, skipped, unchanged


def resolve_file_url(url: str, base_url: str | None) -> str | None:
    """An absolute http(s) URL to fetch a file from; upstream's local storage wrote MEDIA_URL paths,
    which need the address upstream served them at (``base_url``). None when there is none."""
    if base_url and not is_absolute_http_url(url):
        url = urljoin(base_url, url)
    return url if is_absolute_http_url(url) else None


def plan_submission(sub: UpstreamSubmission, *, fetch_files: bool = False) -> PlannedSubmission | Skipped:
    """One unretired upstream row as ours, or why it cannot be imported."""
    name = f"#{sub.id} ({sub.queue_name})"
    if not NAME_PATTERN.match(sub.queue_name or ""):
        return Skipped("submission", name, "queue name is not one this server accepts")
    try:
        parsed = parse_lms_submission(sub.xqueue_header, sub.xqueue_body, MAX_HEADER_BYTES, MAX_BODY_BYTES)
    except ProtocolError as exc:
        return Skipped("submission", name, f"not a valid LMS submission: {exc.message}")
    # The callback goes where the LMS asked in the header (upstream posts there too); the column is
    # a copy that upstream truncated at 128 characters in its early schema.
    callback_url = parsed.callback_url
    files = _file_urls(sub.s3_urls)
    if files is None:
        return Skipped("submission", name, "s3_urls is not a JSON object of file URLs")
    if files and not fetch_files:
        return Skipped("submission", name,
                       f"has {len(files)} uploaded file(s) ({', '.join(sorted(files))}): files are not carried "
                       "over without --fetch-files; the student must submit again")
    for file_name, url in files.items():
        if not isinstance(url, str):
            return Skipped("submission", name, "s3_urls is not a JSON object of file URLs")
        try:
            check_file_name(file_name)
        except InputError as exc:
            return Skipped("submission", name, f"file name not accepted: {exc.message}")
    answered = sub.return_time is not None and bool(sub.grader_reply)
    return PlannedSubmission(
        upstream_id=sub.id,
        queue_name=sub.queue_name,
        requester_id=sub.requester_id or "",
        lms_callback_url=callback_url,
        xqueue_header=sub.xqueue_header,
        xqueue_body=sub.xqueue_body,
        arrival_time=as_utc(sub.arrival_time),
        state="answered" if answered else "pending",
        grader_reply=sub.grader_reply if answered else None,
        return_time=as_utc(sub.return_time) if answered and sub.return_time else None,
        was_pulled=not answered and (sub.pull_time is not None or sub.push_time is not None),
        file_urls=files,
    )


def plan_import(data: UpstreamData, existing: Existing, extra_queues: Iterable[str] = (),
                *, admins: bool = True, fetch_files: bool = False) -> ImportPlan:
    plan = ImportPlan()
    plan.accounts, skipped, unchanged = plan_accounts(data.users, existing, admins=admins)
    plan.skipped.extend(skipped)
    plan.unchanged.extend(unchanged)
    planned_names = {a.username for a in plan.accounts}
    for username, groups in sorted(data.groups.items()):
        if groups and username in planned_names:
            # Upstream's views only require a login; groups never limited queues there.
            plan.skipped.append(Skipped("group", username, f"Django group membership ({', '.join(sorted(groups))}) "
                                        "is not mapped: upstream does not restrict queues by group; use "
                                        "create-user --pull-queues/--submit-queues to restrict"))

    # Latest wins (upstream's rule too): of several open rows for one callback URL, the newest counts.
    newest: dict[tuple[str, str], UpstreamSubmission] = {}
    for sub in data.submissions:
        key = (sub.queue_name, sub.lms_callback_url)
        current = newest.get(key)
        if current is None or (as_utc(sub.arrival_time), sub.id) > (as_utc(current.arrival_time), current.id):
            newest[key] = sub
    queues: set[str] = set()
    for sub in sorted(data.submissions, key=lambda s: (as_utc(s.arrival_time), s.id)):
        if newest[(sub.queue_name, sub.lms_callback_url)] is not sub:
            plan.skipped.append(Skipped("submission", f"#{sub.id} ({sub.queue_name})",
                                        "superseded by a newer submission for the same callback URL"))
            continue
        result = plan_submission(sub, fetch_files=fetch_files)
        if isinstance(result, Skipped):
            plan.skipped.append(result)
            continue
        queues.add(result.queue_name)
        if (result.queue_name, result.xqueue_header) in existing.submissions:
            plan.unchanged.append(Skipped("submission", f"#{sub.id} ({sub.queue_name})", "imported already"))
            continue
        if (result.queue_name, result.lms_callback_url) in existing.pending_callbacks:
            plan.skipped.append(Skipped("submission", f"#{sub.id} ({sub.queue_name})", "superseded by a newer "
                                        "submission for the same callback URL already on this server"))
            continue
        plan.submissions.append(result)
    for name in extra_queues:
        if NAME_PATTERN.match(name):
            queues.add(name)
        else:
            plan.skipped.append(Skipped("queue", name, "queue name is not one this server accepts"))
    plan.queues = sorted(queues - existing.queues)
    return plan


def with_fetched_files(plan: ImportPlan, stored: dict[int, dict[str, str]], failed: dict[int, str]) -> None:
    """Put the fetched files' storage keys on their submissions; those whose files could not be
    fetched are skipped with the reason."""
    kept = []
    for sub in plan.submissions:
        if sub.upstream_id in failed:
            plan.skipped.append(Skipped("submission", f"#{sub.upstream_id} ({sub.queue_name})",
                                        f"its files could not be fetched: {failed[sub.upstream_id]}"))
        else:
            kept.append(replace(sub, files=stored.get(sub.upstream_id, {})) if sub.file_urls else sub)
    plan.submissions = kept


def render_report(plan: ImportPlan, *, dry_run: bool) -> str:
    """The human-readable report: what is (or would be) imported, what is skipped and why."""
    verb = "would import" if dry_run else "imported"
    lines = [f"{'DRY RUN: nothing written. ' if dry_run else ''}"
             f"{verb} {len(plan.accounts)} account(s), {len(plan.queues)} queue(s), "
             f"{len(plan.submissions)} submission(s)"]
    for account in plan.accounts:
        flags = [f for f, on in (("admin", account.is_admin), ("inactive", not account.is_active)) if on]
        lines.append(f"  account  {account.username}{' (' + ', '.join(flags) + ')' if flags else ''}")
    lines.extend(f"  queue    {name}" for name in plan.queues)
    for sub in plan.submissions[:REPORT_MAX_SUBMISSIONS]:
        how = ("graded, callback to deliver" if sub.state == "answered"
               else "was with a grader that never answered: graded again" if sub.was_pulled else "waiting")
        count = len(sub.files or sub.file_urls)
        lines.append(f"  submission #{sub.upstream_id} -> {sub.queue_name}: {how}"
                     + (f", {count} file(s)" if count else ""))
    if len(plan.submissions) > REPORT_MAX_SUBMISSIONS:  # every skipped one is still listed below
        more = len(plan.submissions) - REPORT_MAX_SUBMISSIONS
        lines.append(f"  ... and {more} more submission(s) (--json lists all)")
    if plan.unchanged:
        lines.append(f"already here: {len(plan.unchanged)} (left as they are)")
    lines.append(f"skipped: {len(plan.skipped)}")
    lines.extend(f"  {s.kind:<10} {s.name}: {s.reason}" for s in plan.skipped)
    return "\n".join(lines)


def report_json(plan: ImportPlan, *, dry_run: bool) -> dict[str, object]:
    return {
        "dry_run": dry_run,
        "accounts": [a.username for a in plan.accounts],
        "queues": plan.queues,
        "submissions": [{"upstream_id": s.upstream_id, "queue": s.queue_name, "state": s.state}
                        for s in plan.submissions],
        "already_imported": [{"kind": s.kind, "name": s.name} for s in plan.unchanged],
        "skipped": [{"kind": s.kind, "name": s.name, "reason": s.reason} for s in plan.skipped],
    }
