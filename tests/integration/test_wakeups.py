"""Long-polling graders and a backlog: a submission is announced only when it lands in an empty queue,
and a grader that finds work wakes the next waiting one, so a burst reaches every waiting grader at
once (well before the 2 s re-check) and each submission is handed out exactly once."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable

from tests.integration.clients import GraderClient, LMSClient
from xqueue_server.testing import FakeLMS, ServerThread


def test_a_burst_reaches_every_waiting_grader_at_once(xqueue_factory: Callable[..., ServerThread],
                                                      fake_lms: FakeLMS) -> None:
    server = xqueue_factory()
    graders = [GraderClient(server) for _ in range(4)]
    lms = LMSClient(server)

    def wait_for_one(grader: GraderClient) -> tuple[int, float]:
        item = grader.pull("test-pull", wait="10")
        assert item is not None
        return json.loads(item["xqueue_header"])["submission_id"], time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(wait_for_one, g) for g in graders]
        time.sleep(0.5)  # all four are parked in the server
        started = time.monotonic()
        for i in range(4):
            lms.submit("test-pull", fake_lms.callback_url(f"burst{i}"))
        results = [f.result(timeout=15) for f in waiting]
    ids = [submission_id for submission_id, _ in results]
    assert len(set(ids)) == 4
    assert max(at for _, at in results) - started < 1.5  # not left for the periodic re-check
