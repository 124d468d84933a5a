"""The pull rhythm of the grading slots (pure logic; the daemon does the requests and sleeps).

* after a submission, pull again immediately;
* with a long-poll capable server, ``get_submission?wait=S`` holds the request until work arrives;
  if empty replies come back fast several times in a row the server does not support it, so the
  slots fall back to classic polling and probe again later;
* classic polling sleeps ``poll_min_seconds`` after an empty reply, doubling up to
  ``poll_max_seconds``.
"""

from __future__ import annotations

import logging
from typing import Literal

log = logging.getLogger("xqueue_grader.daemon")

# What one pull ended as: a submission, nothing but pull again at once (the server held the
# request), nothing (sleep before the next pull), or a failure (back off).
PullKind = Literal["work", "again", "empty", "error"]

# Long-poll detection: this many consecutive fast empty replies mean "not supported".
FAST_EMPTY_STRIKES = 3
LONG_POLL_REPROBE_SECONDS = 300.0


def next_poll_delay(current: float, minimum: float, maximum: float) -> float:
    """Backoff after an empty reply: double, within [minimum, maximum] (pure)."""
    return min(maximum, max(minimum, current * 2))


class LongPollState:
    """Shared by all slots: whether to send ``wait=`` and what the replies taught us (pure logic)."""

    def __init__(self, wait_seconds: float) -> None:
        self.wait_seconds = wait_seconds
        self.fast_empties = 0
        self.disabled_until = 0.0
        self.confirmed = False

    def wait(self, now: float) -> float | None:
        if self.wait_seconds <= 0 or now < self.disabled_until:
            return None
        return self.wait_seconds

    def record_empty(self, waited: float | None, elapsed: float, now: float) -> bool:
        """Note an empty reply; returns True when the slot may poll again without sleeping."""
        if waited is None:
            return False
        if elapsed < min(1.0, waited / 2):
            self.fast_empties += 1
            if self.fast_empties >= FAST_EMPTY_STRIKES:
                self.disabled_until = now + LONG_POLL_REPROBE_SECONDS
                self.fast_empties = 0
                self.confirmed = False
                log.info("server answers immediately: long-poll unsupported, polling instead",
                         extra={"fields": {"reprobe_in_seconds": LONG_POLL_REPROBE_SECONDS}})
            return False
        self.fast_empties = 0
        self.confirmed = True
        return True

    def record_work(self, waited: float | None) -> None:
        if waited is not None:
            self.fast_empties = 0
