"""Long-polling graders and a backlog: a submission is announced only when it lands in an empty queue,
and a grader that finds work wakes the next waiting one, so a burst reaches every waiting grader at
once (not by the periodic re-check) and each submission is handed out exactly once.

What this proves is the outcome: with the re-check pushed to 60 s, every waiting grader is served
within its pull. Which path woke each grader is not forced: submissions stored by separate
statements may each find the queue empty and each announce; those stored in one statement (group
commit) announce once, and the woken grader then wakes the next."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable

from tests.integration.clients import GraderClient, LMSClient
from xqueue_server.testing import FakeLMS, ServerThread


def test_a_burst_reaches_every_waiting_grader_at_once(xqueue_factory: Callable[..., ServerThread],
                                                      fake_lms: FakeLMS) -> None:
    # The periodic re-check is pushed out to 60 s, so a grader served within the 20 s pull was woken.
    server = xqueue_factory(long_poll_recheck_seconds=60.0)
    graders = [GraderClient(server) for _ in range(4)]
    lmses = [LMSClient(server) for _ in range(4)]  # one session per submitting thread

    def wait_for_one(grader: GraderClient) -> tuple[int, float]:
        item = grader.pull("test-pull", wait="20")
        assert item is not None, "a waiting grader was never woken"
        return json.loads(item["xqueue_header"])["submission_id"], time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(wait_for_one, g) for g in graders]
        time.sleep(0.5)  # all four are parked in the server
        started = time.monotonic()
        # All four at once, so later ones land in a queue that is not empty and are not announced.
        submits = [pool.submit(client.submit, "test-pull", fake_lms.callback_url(f"burst{i}"))
                   for i, client in enumerate(lmses)]
        for done in submits:
            done.result(timeout=30)
        results = [f.result(timeout=30) for f in waiting]
    ids = [submission_id for submission_id, _ in results]
    assert len(set(ids)) == 4
    # A grader that was never woken would get its submission from the last look at the end of its 20 s
    # wait; 10 s leaves a loaded machine plenty of room and still tells the two apart.
    assert max(at for _, at in results) - started < 10.0
    print(f"\nburst of 4: the last waiting grader got its submission {max(at for _, at in results) - started:.2f} s"
          " after the first submit")
