-- `xqueue-admin import-xqueue` (xqueue_server/upstream_writer.py, upstream_source.py) and the
-- rehash of imported Django passwords at login (auth.py). Each query under a "-- name:" line.

-- ---------------------------------------------------------------- read from the UPSTREAM database
-- Plain SQL that MySQL/MariaDB, PostgreSQL and SQLite all run (upstream's Django schema, no parameters).

-- name: upstream_users
SELECT id, username, password, is_active, is_superuser, is_staff FROM auth_user ORDER BY id;

-- name: upstream_groups
SELECT u.username, g.name FROM auth_user_groups ug
  JOIN auth_user u ON u.id = ug.user_id
  JOIN auth_group g ON g.id = ug.group_id
 ORDER BY u.username, g.name;

-- name: upstream_submissions
-- Unretired rows only: retired ones are finished (graded and acknowledged, or given up).
SELECT id, requester_id, lms_callback_url, queue_name, xqueue_header, xqueue_body, s3_urls,
       arrival_time, pull_time, push_time, return_time, grader_reply
  FROM queue_submission
 WHERE NOT retired
 ORDER BY arrival_time, id;

-- ---------------------------------------------------------------- our database (PostgreSQL)

-- name: import_existing_usernames
SELECT username FROM accounts WHERE username = ANY($1::text[]);

-- name: import_existing_queues
SELECT name FROM queues;

-- name: import_existing_submissions
-- Rows of an earlier import (or the same LMS submission sent here): the LMS's header holds its own
-- unique submission key, so (queue, header) identifies a submission.
SELECT queue_name, xqueue_header FROM submissions WHERE xqueue_header = ANY($1::text[]);

-- name: import_pending_callbacks
SELECT DISTINCT queue_name, lms_callback_url FROM submissions
 WHERE state = 'pending' AND lms_callback_url = ANY($1::text[]);

-- name: import_account
-- An existing account is never touched (its password may have been changed here since).
INSERT INTO accounts (username, password_hash, is_admin, is_active)
VALUES ($1, $2, $3, $4)
ON CONFLICT (username) DO NOTHING
RETURNING id;

-- name: import_queue
INSERT INTO queues (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING name;

-- name: import_lock
-- Imports run one at a time (their "already here?" check and their inserts belong together); the lock
-- ends with the transaction.
SELECT pg_advisory_xact_lock(1481724239);  -- "XQUE" + 2: apart from the migration lock

-- name: import_submission
-- Kept as upstream had it: arrival time (queue order and age), header and callback URL (the LMS
-- accepts the grade only with its own key). A graded row ($7 = 'answered') gets its callback in the
-- outbox; $10: its files {filename: storage key}.
WITH inserted AS (
    INSERT INTO submissions (queue_name, requester_id, lms_callback_url, xqueue_header, xqueue_body,
                             arrival_time, state, grader_reply, return_time, files)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
    RETURNING id, state, lms_callback_url, xqueue_header, grader_reply
), queued AS (
    INSERT INTO callbacks (submission_id, kind, url, xqueue_header, xqueue_body)
    SELECT id, 'grade', lms_callback_url, xqueue_header, grader_reply FROM inserted WHERE state = 'answered'
    RETURNING id
)
SELECT (SELECT id FROM inserted) AS id, (SELECT count(*) FROM queued) AS callbacks;

-- name: import_notify_queues
-- Wake graders long-polling these queues, on every replica (delivered at commit).
SELECT count(pg_notify('xqueue_submissions', q)) FROM unnest($1::text[]) AS q;

-- name: import_notify_callbacks
SELECT pg_notify('xqueue_callbacks', '');

-- name: rehash_password
-- After a login with an imported Django hash: store ours instead. Only when the row still holds the
-- hash that was verified (a concurrent login or a password change wins), and sessions are kept:
-- the password itself did not change.
UPDATE accounts SET password_hash = $3 WHERE id = $1 AND password_hash = $2 RETURNING id;
