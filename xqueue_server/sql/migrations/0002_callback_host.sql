-- 0002: the LMS host of each callback, so the outbox can bound deliveries per host (fairness: one
-- LMS that hangs must not take every delivery slot). host is "host:port" as written in the URL,
-- lower-cased, without user info ('' when the URL has no authority, which submit never accepts).
ALTER TABLE callbacks
    ADD COLUMN host text NOT NULL
    GENERATED ALWAYS AS (
        coalesce(substring(lower(url) from '^[a-z][a-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)'), '')
    ) STORED;
-- Per-host claims: distinct hosts with pending rows, then each host's oldest due rows.
CREATE INDEX callbacks_host_due_idx ON callbacks (host, next_attempt_at) WHERE state = 'pending';
