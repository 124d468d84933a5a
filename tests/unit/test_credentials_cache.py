"""The per-process session cache (db.CredentialsCache): used only while enabled, never stores an
answer read before an invalidation, and never outlives its session or MAX_SECONDS."""

from __future__ import annotations

import time

from xqueue_server.db import Account, CredentialsCache

ALICE = Account(id=1, username="alice", is_admin=False, pull_queues=None, submit_queues=("q",))


def test_nothing_is_remembered_while_disabled() -> None:
    cache = CredentialsCache()
    cache.put("k", ALICE, cache.generation, 60)
    assert cache.get("k") is None


def test_an_enabled_cache_remembers_until_invalidated() -> None:
    cache = CredentialsCache()
    cache.enable(True)
    cache.put("k", ALICE, cache.generation, 60)
    assert cache.get("k") == ALICE
    cache.invalidate("conn", 1, "xqueue_credentials", "")  # the LISTEN callback's arguments
    assert cache.get("k") is None


def test_an_answer_read_before_an_invalidation_is_not_stored() -> None:
    cache = CredentialsCache()
    cache.enable(True)
    generation = cache.generation  # the lookup starts
    cache.invalidate()  # a change commits while it runs
    cache.put("k", ALICE, generation, 60)
    assert cache.get("k") is None


def test_disabling_forgets_everything() -> None:
    cache = CredentialsCache()
    cache.enable(True)
    cache.put("k", ALICE, cache.generation, 60)
    cache.enable(False)
    cache.enable(True)
    assert cache.get("k") is None


def test_an_entry_never_outlives_its_session() -> None:
    cache = CredentialsCache()
    cache.enable(True)
    cache.put("k", ALICE, cache.generation, 0.05)
    assert cache.get("k") == ALICE
    time.sleep(0.06)
    assert cache.get("k") is None


def test_an_entry_lives_at_most_max_seconds() -> None:
    cache = CredentialsCache()
    cache.enable(True)
    cache.MAX_SECONDS = 0.05
    cache.put("k", ALICE, cache.generation, 3600)
    time.sleep(0.06)
    assert cache.get("k") is None
