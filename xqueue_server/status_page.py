"""The status page as data and its rendering to HTML with inline SVG charts (pure: no I/O).

``status_api.py`` gathers a ``StatusPage`` from the database and hands it to ``render_status``. The
page works without JavaScript: it refreshes itself with ``<meta http-equiv="refresh">``, its charts
are inline SVG, and its CSS lays the queues out as cards that stack on a phone. Every text that
comes from outside (queue names, grader addresses, account names, callback errors) is escaped here.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

# Chart colours: distinct hues, also told apart by position (stacking order) and by the legend.
GRADED_COLOUR = "#1a9850"
ERROR_COLOUR = "#f0a000"
FAILED_COLOUR = "#d7191c"
EMPTY_COLOUR = "#e3e6ea"
MAX_ERROR_CHARS = 160  # a callback's last error is shown cut to this many characters


@dataclass(frozen=True)
class Bucket:
    """One time slice of a queue's activity (see ``activity`` in sql/status.sql)."""

    graded: int = 0  # results without an error
    errors: int = 0  # results reporting an error
    failed: int = 0  # poison or dead-lettered: no grade reached the LMS

    @property
    def results(self) -> int:
        return self.graded + self.errors


@dataclass(frozen=True)
class GraderSeen:
    grader_id: str  # the puller's address; "" when unknown
    in_flight: int
    last_pull_age_seconds: float | None


@dataclass(frozen=True)
class DeadLetter:
    callback_id: int
    submission_id: int | None
    kind: str  # "grade" or "failure_notice"
    attempts: int
    age_seconds: float
    last_error: str


@dataclass(frozen=True)
class QueueStatus:
    name: str
    waiting: int
    in_flight: int
    oldest_waiting_seconds: float | None
    buckets: tuple[Bucket, ...]  # oldest first; the last one is the current slice
    dead_letters: int = 0
    newest_dead: tuple[DeadLetter, ...] = ()
    graders: tuple[GraderSeen, ...] = ()
    long_poll_waiters: int = 0  # graders waiting in get_submission?wait= on this server process

    @property
    def graded_total(self) -> int:
        return sum(b.results for b in self.buckets)

    @property
    def failed_total(self) -> int:
        return sum(b.failed for b in self.buckets)


@dataclass(frozen=True)
class Outbox:
    pending: int
    oldest_pending_seconds: float | None
    dead: int


@dataclass(frozen=True)
class StatusPage:
    username: str
    is_admin: bool
    generated_at: datetime
    refresh_seconds: int
    bucket_seconds: int
    window_seconds: int
    graders_seen_seconds: int
    queues: tuple[QueueStatus, ...] = ()
    outbox: Outbox | None = None  # admins only: it spans every queue
    logout_token: str = ""
    extra_notes: tuple[str, ...] = ()


# ---------------------------------------------------------------- data shaping


def assemble_buckets(rows: Iterable[tuple[int, str, int]], count: int) -> tuple[Bucket, ...]:
    """Buckets oldest first from (bucket index with 0 = newest, outcome, n) rows; others are dropped."""
    graded = [0] * count
    errors = [0] * count
    failed = [0] * count
    by_outcome = {"graded": graded, "error": errors, "failed": failed}
    for index, outcome, n in rows:
        target = by_outcome.get(outcome)
        if target is not None and 0 <= index < count:
            target[count - 1 - index] += n
    return tuple(Bucket(g, e, f) for g, e, f in zip(graded, errors, failed, strict=True))


def format_age(seconds: float | None) -> str:
    """A duration for people: "—", "42 s", "3 min 5 s", "5 min", "2 h 10 min", "3 d 4 h"."""
    if seconds is None:
        return "—"
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- charts


CHART_WIDTH = 240
CHART_HEIGHT = 64


def bar_chart(title: str, buckets: Sequence[Bucket], series: Sequence[tuple[str, str]], bucket_seconds: int,
              css_class: str) -> str:
    """A small stacked bar chart (inline SVG, scales to its box) of ``series`` = (Bucket attribute, colour)."""
    count = max(len(buckets), 1)
    totals = [sum(getattr(b, attr) for attr, _ in series) for b in buckets]
    peak = max([*totals, 1])
    slot = CHART_WIDTH / count
    gap = 1 if slot > 4 else 0
    parts = []
    for i, bucket in enumerate(buckets):
        x = i * slot
        # An empty slot still shows a faint base line, so "nothing happened" is visibly a chart.
        parts.append(f'<rect class="base" x="{x + gap / 2:.2f}" y="{CHART_HEIGHT - 2}" '
                     f'width="{slot - gap:.2f}" height="2" fill="{EMPTY_COLOUR}"/>')
        y = float(CHART_HEIGHT)
        for attr, colour in series:
            value = getattr(bucket, attr)
            if value <= 0:
                continue
            height = max(value / peak * (CHART_HEIGHT - 4), 2.0)
            y -= height
            parts.append(f'<rect class="bar {attr}" data-value="{value}" x="{x + gap / 2:.2f}" y="{y:.2f}" '
                         f'width="{slot - gap:.2f}" height="{height:.2f}" fill="{colour}"/>')
    minutes = bucket_seconds * count // 60
    most = max(totals, default=0)
    slice_text = format_age(bucket_seconds)
    label = f"{title}: {sum(totals)} in the last {minutes} min, at most {most} per {slice_text}"
    return (f'<figure class="chart {css_class}"><figcaption>{_e(title)} '
            f'<span class="peak">max {most}/{_e(slice_text)}</span></figcaption>'
            f'<svg viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" preserveAspectRatio="none" role="img" '
            f'aria-label="{_e(label)}"><title>{_e(label)}</title>{"".join(parts)}</svg>'
            f'<div class="axis"><span>{minutes} min ago</span><span>now</span></div></figure>')


# ---------------------------------------------------------------- page


STYLE = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f5f6f8}
header{display:flex;flex-wrap:wrap;gap:.3rem 1rem;align-items:baseline;justify-content:space-between;
 padding:.7rem 1rem;background:#243447;color:#fff}
header h1{font-size:1.15rem;margin:0}
header .who{font-size:.85rem;opacity:.9;overflow-wrap:anywhere}
header form{display:inline;margin:0}
header button{font:inherit;font-size:.8rem;padding:.1rem .5rem;cursor:pointer}
main{padding:.8rem;display:grid;gap:.8rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,22rem),1fr))}
.note{grid-column:1/-1;margin:0;font-size:.85rem;color:#4a5568}
section.queue,section.outbox{background:#fff;border:1px solid #d9dde3;border-radius:8px;padding:.7rem .8rem;
 min-width:0}
section h2{font-size:1.05rem;margin:0 0 .5rem;overflow-wrap:anywhere}
dl.numbers{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:.4rem;margin:0 0 .6rem}
dl.numbers div{background:#f5f6f8;border-radius:6px;padding:.3rem .4rem;min-width:0}
dl.numbers dt{font-size:.72rem;color:#4a5568;text-transform:uppercase;letter-spacing:.02em}
dl.numbers dd{margin:0;font-size:1.15rem;font-weight:600;overflow-wrap:anywhere}
dd.bad{color:#b3141a}
.charts{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:.6rem}
figure.chart{margin:0;min-width:0}
figure.chart figcaption{font-size:.78rem;color:#4a5568;display:flex;justify-content:space-between;gap:.3rem}
figure.chart svg{display:block;width:100%;height:64px;background:#fbfbfc;border-bottom:1px solid #c5cad3}
.axis{display:flex;justify-content:space-between;font-size:.7rem;color:#6b7585}
.legend{font-size:.75rem;color:#4a5568;margin:.3rem 0 0;display:flex;flex-wrap:wrap;gap:.2rem .8rem}
.legend i{display:inline-block;width:.7rem;height:.7rem;border-radius:2px;margin-right:.25rem;vertical-align:-1px}
h3{font-size:.85rem;margin:.7rem 0 .3rem}
table{width:100%;border-collapse:collapse;font-size:.82rem;table-layout:fixed}
th,td{text-align:left;padding:.15rem .3rem;border-bottom:1px solid #eceef1;overflow-wrap:anywhere}
th{font-weight:600;color:#4a5568}
p.empty{margin:.2rem 0;color:#6b7585;font-size:.82rem}
ul.dead{margin:0;padding-left:1.1rem;font-size:.82rem;overflow-wrap:anywhere}
ul.dead q{color:#b3141a}
footer{padding:0 1rem 1rem;font-size:.75rem;color:#6b7585}
"""


def _number(label: str, value: str, css_id: str, bad: bool = False) -> str:
    cls = ' class="bad"' if bad else ""
    return f'<div><dt>{_e(label)}</dt><dd id="{css_id}"{cls}>{_e(value)}</dd></div>'


def _queue_section(index: int, queue: QueueStatus, page: StatusPage) -> str:
    window_min = page.window_seconds // 60
    numbers = "".join([
        _number("Waiting", str(queue.waiting), f"q{index}-waiting"),
        _number("Oldest waiting", format_age(queue.oldest_waiting_seconds), f"q{index}-oldest"),
        _number("In flight", str(queue.in_flight), f"q{index}-in-flight"),
        _number(f"Graded ({window_min} min)", str(queue.graded_total), f"q{index}-graded"),
        _number(f"Failed ({window_min} min)", str(queue.failed_total), f"q{index}-failed",
                bad=queue.failed_total > 0),
        _number("Dead letters", str(queue.dead_letters), f"q{index}-dead", bad=queue.dead_letters > 0),
    ])
    charts = (
        '<div class="charts">'
        + bar_chart("Graded", queue.buckets, (("graded", GRADED_COLOUR), ("errors", ERROR_COLOUR)),
                    page.bucket_seconds, "throughput")
        + bar_chart("Failed", queue.buckets, (("failed", FAILED_COLOUR),), page.bucket_seconds, "failures")
        + "</div>"
        f'<p class="legend"><span><i style="background:{GRADED_COLOUR}"></i>graded</span>'
        f'<span><i style="background:{ERROR_COLOUR}"></i>result reports an error</span>'
        f'<span><i style="background:{FAILED_COLOUR}"></i>not graded or not delivered</span></p>'
    )
    if queue.graders or queue.long_poll_waiters:
        rows = "".join(
            f"<tr><td>{_e(g.grader_id or 'unknown')}</td><td>{g.in_flight}</td>"
            f"<td>{_e(format_age(g.last_pull_age_seconds))} ago</td></tr>"
            for g in queue.graders
        )
        waiting = (f'<p class="empty">{queue.long_poll_waiters} grader request(s) waiting for work on this '
                   "server (long poll)</p>" if queue.long_poll_waiters else "")
        table = ('<table class="graders"><thead><tr><th>Grader</th><th>In flight</th><th>Last pull</th></tr>'
                 f"</thead><tbody>{rows}</tbody></table>" if queue.graders else "")
        graders = table + waiting
    else:
        graders = f'<p class="empty">No grader pulled in the last {format_age(page.graders_seen_seconds)}.</p>'
    if queue.newest_dead:
        items = "".join(
            f"<li>submission {d.submission_id if d.submission_id is not None else '—'} ({_e(d.kind)}), "
            f"{d.attempts} tries, {_e(format_age(d.age_seconds))} old: <q>{_e(_clip(d.last_error))}</q></li>"
            for d in queue.newest_dead
        )
        more = queue.dead_letters - len(queue.newest_dead)
        dead = (f'<h3>Dead-lettered callbacks (newest)</h3><ul class="dead">{items}</ul>'
                + (f'<p class="empty">and {more} more</p>' if more > 0 else ""))
    else:
        dead = ""
    return (f'<section class="queue" id="queue-{index}" data-queue="{_e(queue.name)}">'
            f"<h2>{_e(queue.name)}</h2><dl class=\"numbers\">{numbers}</dl>{charts}"
            f"<h3>Graders</h3>{graders}{dead}</section>")


def _outbox_section(outbox: Outbox) -> str:
    numbers = "".join([
        _number("Pending", str(outbox.pending), "outbox-pending"),
        _number("Oldest pending", format_age(outbox.oldest_pending_seconds), "outbox-oldest"),
        _number("Dead letters", str(outbox.dead), "outbox-dead", bad=outbox.dead > 0),
    ])
    return f'<section class="outbox"><h2>Callback outbox (all queues)</h2><dl class="numbers">{numbers}</dl></section>'


def _document(title: str, body: str, refresh_seconds: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_seconds)}">' if refresh_seconds else ""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'{refresh}<meta name="robots" content="noindex"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head><body>{body}</body></html>")


def render_status(page: StatusPage) -> str:
    """The whole status page as an HTML document."""
    role = "admin: every queue" if page.is_admin else "the queues this account may pull or submit to"
    logout = ('<form method="post" action="/status/logout/">'
              f'<input type="hidden" name="token" value="{_e(page.logout_token)}">'
              '<button type="submit">Log out</button></form>') if page.logout_token else ""
    header = (f'<header><h1>XQueue status</h1><span class="who">{_e(page.username)} ({_e(role)}) {logout}'
              "</span></header>")
    sections = []
    if page.outbox is not None:
        sections.append(_outbox_section(page.outbox))
    if page.queues:
        sections.extend(_queue_section(i, q, page) for i, q in enumerate(page.queues))
    else:
        sections.append('<p class="note" id="no-queues">No queues to show: this account may not pull or submit '
                        "to any queue.</p>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in page.extra_notes)
    stamp = page.generated_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    footer = (f'<footer>Generated <time id="generated" datetime="{_e(page.generated_at.isoformat())}">{_e(stamp)}'
              f"</time>; refreshes every {page.refresh_seconds} s. Charts: the last "
              f"{page.window_seconds // 60} min in {format_age(page.bucket_seconds)} slices, oldest on the left. "
              "Failed = retired as poison (no result after the maximum number of pulls; the LMS got the failure "
              "notice) or the grade's callback was dead-lettered.</footer>")
    return _document("XQueue status", header + f"<main>{notes}{''.join(sections)}</main>" + footer,
                     page.refresh_seconds)


def render_login(message: str = "", csrf_token: str = "", username: str = "") -> str:
    """The login form of the status page (posts to /status/login/)."""
    alert = f'<p class="note" id="login-error" role="alert">{_e(message)}</p>' if message else ""
    form = ('<section class="queue"><h2>Log in</h2>'
            f'{alert}<form method="post" action="/status/login/" id="login">'
            f'<input type="hidden" name="csrf" value="{_e(csrf_token)}">'
            '<p><label>Username<br><input name="username" autocomplete="username" required '
            f'value="{_e(username)}" style="width:100%"></label></p>'
            '<p><label>Password<br><input name="password" type="password" autocomplete="current-password" '
            'required style="width:100%"></label></p>'
            '<p><button type="submit">Log in</button></p></form></section>')
    return _document("XQueue status: log in", f"<header><h1>XQueue status</h1></header><main>{form}</main>")
