-- 0001: the whole initial schema.
-- Submissions move: pending (pullable when no valid lease) -> answered (grader replied; callback in
-- the outbox) -> delivered (LMS said 200), or -> retired (superseded by a newer submit, poison after
-- too many pulls, dead-lettered callback, retention).

CREATE TABLE queues (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    id             bigserial PRIMARY KEY,
    username       text NOT NULL UNIQUE,
    password_hash  text NOT NULL,
    is_admin       boolean NOT NULL DEFAULT false,
    is_active      boolean NOT NULL DEFAULT true,
    -- NULL = unrestricted (upstream behaviour); an array limits the account to those queues.
    pull_queues    text[],
    submit_queues  text[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Sessions live in the database so every server replica accepts every cookie.
CREATE TABLE sessions (
    key_hash    text PRIMARY KEY,             -- sha256 of the cookie value; the value itself is never stored
    account_id  bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

CREATE TABLE api_tokens (
    id             bigserial PRIMARY KEY,
    token_hash     text NOT NULL UNIQUE,      -- sha256 of the token
    account_id     bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    pull_queues    text[],
    submit_queues  text[],
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz
);

CREATE TABLE submissions (
    id                bigserial PRIMARY KEY,   -- also the FIFO order: assigned at insert
    queue_name        text NOT NULL,
    requester_id      text NOT NULL DEFAULT '',
    lms_callback_url  text NOT NULL,
    xqueue_header     text NOT NULL,           -- verbatim LMS header, echoed in the callback
    xqueue_body       text NOT NULL,           -- verbatim LMS body, handed to graders
    files             jsonb NOT NULL DEFAULT '{}'::jsonb,  -- {filename: storage key}
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'answered', 'delivered', 'retired')),
    retired_reason    text,
    arrival_time      timestamptz NOT NULL DEFAULT now(),
    pull_count        integer NOT NULL DEFAULT 0,
    pulled_at         timestamptz,
    lease_expires_at  timestamptz,
    pullkey           text,
    grader_id         text,
    return_time       timestamptz,
    grader_reply      text,
    finished_at       timestamptz
);
-- The hot path: pullable rows of one queue in arrival order. Partial, so finished history never slows it.
CREATE INDEX submissions_pending_idx ON submissions (queue_name, id) WHERE state = 'pending';
CREATE INDEX submissions_callback_url_idx ON submissions (lms_callback_url) WHERE state = 'pending';
CREATE INDEX submissions_finished_idx ON submissions (finished_at) WHERE state <> 'pending';

-- Durable outbox of callbacks to the LMS.
CREATE TABLE callbacks (
    id               bigserial PRIMARY KEY,
    submission_id    bigint REFERENCES submissions(id) ON DELETE CASCADE,
    kind             text NOT NULL CHECK (kind IN ('grade', 'failure_notice')),
    url              text NOT NULL,
    xqueue_header    text NOT NULL,
    xqueue_body      text NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_error       text
);
CREATE INDEX callbacks_due_idx ON callbacks (next_attempt_at) WHERE state = 'pending';
CREATE INDEX callbacks_dead_idx ON callbacks (id) WHERE state = 'dead';

-- Server-wide secrets shared by all replicas (signing key for file URLs).
CREATE TABLE server_secrets (
    name   text PRIMARY KEY,
    value  text NOT NULL
);
INSERT INTO server_secrets (name, value)
VALUES ('file_url_signing_key', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
