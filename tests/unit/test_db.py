"""Pure parts of db.py: the named queries and the migration files."""

from __future__ import annotations

from xqueue_server.db import QUERIES, load_queries, migration_files


def test_every_query_is_named_and_migrations_are_ordered() -> None:
    assert load_queries("-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;") == {"a": "SELECT 1;", "b": "SELECT 2;"}
    assert {"claim_submissions", "record_results", "insert_submissions", "claim_due_callbacks"} <= set(QUERIES)
    versions = [v for v, _, _ in migration_files()]
    assert versions == sorted(versions) and versions[0] == 1
