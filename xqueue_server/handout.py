"""Handing claimed submissions to a grader whose connection may be gone.

A grader pod that stops while its ``get_submission?wait=S`` request is parked has left by the time
work arrives. Without care the server would claim a submission for it, write the answer into a
closed connection, and the submission would sit out its whole lease. So ``get_submission`` asks
``client_gone`` before claiming (and the long-poll waiters skip departed graders), writes the answer
itself with ``send`` so that a failed write is seen, and on any failure after claiming calls
``release``: the submission is pullable again at once and the pull is not counted.

Best effort by nature: a grader that vanishes without closing its connection (a cut network) still
looks present, and its claim comes back after the lease as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web

from .db import ClaimedSubmission, Database
from .metrics import Metrics

log = logging.getLogger("xqueue.handout")


def client_gone(request: web.Request) -> bool:
    """True once the client has closed its connection (aiohttp drops the transport when it sees that)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def send(request: web.Request, response: web.Response) -> bool:
    """Write ``response`` now instead of after the handler returns; False when it cannot be delivered."""
    if client_gone(request):
        return False
    try:
        await response.prepare(request)
        await response.write_eof()
    except (ConnectionError, OSError):  # aiohttp's ClientConnectionResetError is a ConnectionResetError
        return False
    return True


async def release(db: Database, metrics: Metrics, queue_name: str, claimed: Sequence[ClaimedSubmission]) -> None:
    """Hand claims that never reached their grader back at once. Completes even when the calling
    handler is being cancelled; on a database error the claims come back after their lease instead."""
    task = asyncio.ensure_future(db.release_submissions([(c.id, c.pullkey) for c in claimed]))
    task.add_done_callback(_consume_error)
    try:
        released = await asyncio.shield(task)
    except asyncio.CancelledError:
        raise  # the task itself carries on
    except Exception as exc:
        log.warning("could not release claims of a departed grader; they return after the lease",
                    extra={"fields": {"queue": queue_name, "ids": [c.id for c in claimed], "error": repr(exc)}})
        return
    metrics.pulls_released.labels(queue_name).inc(released)
    log.info("grader gone before receiving its submissions; released", extra={"fields": {
        "queue": queue_name, "ids": [c.id for c in claimed], "released": released}})


def _consume_error(task: asyncio.Future[int]) -> None:
    # Retrieve the exception of a release that finished after its handler was cancelled, so asyncio
    # does not report it as never retrieved (the warning above covers the awaited case).
    if not task.cancelled():
        task.exception()
