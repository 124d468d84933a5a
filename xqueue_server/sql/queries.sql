-- Every query the server runs, each under a "-- name:" line; loaded by xqueue_server/db.py.
-- Reading the queue's behaviour means reading this file.

-- name: queue_exists
SELECT EXISTS (SELECT 1 FROM queues WHERE name = $1);

-- name: list_queue_names
SELECT name FROM queues ORDER BY name;

-- name: create_queue
INSERT INTO queues (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING name;

-- name: delete_queue
DELETE FROM queues WHERE name = $1 RETURNING name;

-- name: queue_stats
-- queued: pullable now (what get_queuelen reports); in_flight: pulled with a lease still valid.
SELECT q.name,
       count(s.id) FILTER (WHERE s.lease_expires_at IS NULL OR s.lease_expires_at <= now()) AS queued,
       count(s.id) FILTER (WHERE s.lease_expires_at > now()) AS in_flight,
       extract(epoch FROM now() - min(s.arrival_time)
               FILTER (WHERE s.lease_expires_at IS NULL OR s.lease_expires_at <= now()))::float8
           AS oldest_queued_age_seconds
FROM queues q
LEFT JOIN submissions s ON s.queue_name = q.name AND s.state = 'pending'
WHERE ($1::text IS NULL OR q.name = $1)
GROUP BY q.name
ORDER BY q.name;

-- name: in_flight_by_grader
-- Leased submissions per grader address (the pod IP in a cluster): lets the operator prefer idle
-- pods when it scales down.
SELECT grader_id, count(*) AS in_flight FROM submissions
 WHERE queue_name = $1 AND state = 'pending' AND lease_expires_at > now()
 GROUP BY grader_id;

-- name: queue_length
SELECT count(*) FROM submissions
WHERE queue_name = $1 AND state = 'pending'
  AND (lease_expires_at IS NULL OR lease_expires_at <= now());

-- name: insert_submissions
-- Stores submissions ($1..$6: one array element each; a batch, see batching.py; a single one is a
-- batch of one) and returns, per input position n: id, superseded, queue_length.
-- Latest wins (upstream rule): earlier submissions with the same queue and callback URL that nobody
-- is grading right now are retired silently. The pairs (queue, URL) of one batch are distinct
-- (batching.py keeps the others for the next batch), so the batch means the same as its submissions
-- one after another: queue_length counts the pullable rows of the queue before the statement, minus
-- what this submission and the ones before it in the batch superseded, plus those it and they added.
-- Long-polling graders are told only when the queue had nothing pullable: a grader waits only after
-- finding the queue empty, and one that is woken and finds work wakes the next (get_submission), so
-- a busy queue costs no NOTIFY per submission. (All parts see the snapshot from before the statement.)
-- Ids come from the sequence in input order (the FIFO order of the batch) before the insert, so each
-- input position knows its row.
WITH input AS (
    SELECT nextval('submissions_id_seq') AS id, i.*
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[])
           WITH ORDINALITY AS i(queue_name, callback_url, xqueue_header, xqueue_body, files, requester_id, n)
     ORDER BY i.n
), superseded AS (
    UPDATE submissions s
       SET state = 'retired', retired_reason = 'superseded', finished_at = now()
      FROM input i
     WHERE s.lms_callback_url = i.callback_url AND s.queue_name = i.queue_name AND s.state = 'pending'
       AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= now())
    RETURNING i.n
), inserted AS (
    INSERT INTO submissions (id, queue_name, lms_callback_url, xqueue_header, xqueue_body, files, requester_id)
    SELECT id, queue_name, callback_url, xqueue_header, xqueue_body, files, requester_id FROM input ORDER BY n
), pullable AS (
    SELECT q.queue_name, count(s.id) AS before
      FROM (SELECT DISTINCT queue_name FROM input) q
      LEFT JOIN submissions s
        ON s.queue_name = q.queue_name AND s.state = 'pending'
       AND (s.lease_expires_at IS NULL OR s.lease_expires_at <= now())
     GROUP BY q.queue_name
), outcome AS (
    SELECT i.n, i.id, i.queue_name, count(x.n) AS superseded
      FROM input i LEFT JOIN superseded x ON x.n = i.n
     GROUP BY i.n, i.id, i.queue_name
), notified AS (
    SELECT pg_notify('xqueue_submissions', p.queue_name)
      FROM pullable p
     WHERE p.before = (SELECT coalesce(sum(o.superseded), 0) FROM outcome o WHERE o.queue_name = p.queue_name)
)
SELECT o.n, o.id, o.superseded,
       (p.before + sum(1 - o.superseded) OVER (PARTITION BY o.queue_name ORDER BY o.n))::bigint AS queue_length,
       (SELECT count(*) FROM notified) AS notified
  FROM outcome o JOIN pullable p USING (queue_name)
 ORDER BY o.n;

-- name: claim_submissions
-- Atomic claim: FIFO, skips rows another transaction is claiming, never hands out a row with a valid
-- lease, and issues a fresh unguessable key (gen_random_uuid uses the server's strong RNG).
-- One statement serves several pulls of one queue at once (a batch, see batching.py): $5 holds one
-- grader id per slot and $6 the pull (0, 1, ...) each slot belongs to; a pull of max=3 has three
-- slots. The oldest pullable rows go to the slots in order, so earlier pulls get older submissions.
WITH next AS (
    SELECT c.id, c.pull_count, row_number() OVER (ORDER BY c.id) AS slot
      FROM (SELECT id, pull_count FROM submissions
             WHERE queue_name = $1 AND state = 'pending'
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
               AND pull_count < $4
             ORDER BY id
             LIMIT $2
             FOR UPDATE SKIP LOCKED) c
), slots AS (
    SELECT * FROM unnest($5::text[], $6::int[]) WITH ORDINALITY AS w(grader_id, pull, slot)
)
UPDATE submissions s
   SET pull_count = s.pull_count + 1,
       pulled_at = now(),
       lease_expires_at = now() + make_interval(secs => $3),
       pullkey = replace(gen_random_uuid()::text, '-', ''),
       grader_id = slots.grader_id
  FROM next JOIN slots USING (slot)
 WHERE s.id = next.id
RETURNING slots.pull, s.id, s.pullkey, s.xqueue_body, s.files, next.pull_count > 0 AS was_expired;

-- name: release_submissions
-- Claims whose grader went away before the answer reached it ($1 ids with their $2 keys): pullable
-- again at once, and the pull is not counted (it reached no grader, so it neither moves towards
-- poison nor counts as an expired lease). Matching the key leaves a claim that moved on alone.
-- Waiting graders are woken as for a new submission.
WITH released AS (
    UPDATE submissions s
       SET lease_expires_at = NULL, pull_count = greatest(s.pull_count - 1, 0)
      FROM unnest($1::bigint[], $2::text[]) AS r(id, pullkey)
     WHERE s.id = r.id AND s.pullkey = r.pullkey AND s.state = 'pending'
    RETURNING s.queue_name
)
SELECT (SELECT count(*) FROM released) AS released,
       (SELECT count(*) FROM (SELECT pg_notify('xqueue_submissions', queue_name) FROM released) n) AS notified;

-- name: record_results
-- Fencing: only the key of the latest pull is accepted. A reply and its callback are stored in one
-- statement, so a stored result always has its outbox row. Several replies at once (a batch, see
-- batching.py; one reply is a batch of one): $1 submission ids (distinct), $2 keys, $3 bodies.
-- $4: the queues the caller may pull (NULL: all).
-- $5: when set, this process delivers the callbacks itself right after the commit: the rows are
-- stored already claimed (one attempt, invisible for $5 seconds, like claim_due_callbacks) and nobody
-- is notified; if the process dies first, the rows become due again and any replica's outbox retries
-- them. NULL: ordinary due rows, announced to the outbox workers.
-- Returns one row per reply that was recorded; the others are looked up with submission_key_states.
WITH reply AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS r(id, pullkey, body)
), answered AS (
    UPDATE submissions s
       SET state = 'answered', return_time = now(), grader_reply = r.body, lease_expires_at = NULL
      FROM reply r
     WHERE s.id = r.id AND s.pullkey = r.pullkey AND s.state = 'pending'
       AND ($4::text[] IS NULL OR s.queue_name = ANY($4::text[]))
    RETURNING s.id, s.lms_callback_url, s.xqueue_header, r.body
), queued AS (
    INSERT INTO callbacks (submission_id, kind, url, xqueue_header, xqueue_body, attempts, next_attempt_at)
    SELECT id, 'grade', lms_callback_url, xqueue_header, body, CASE WHEN $5::float8 IS NULL THEN 0 ELSE 1 END,
           now() + make_interval(secs => coalesce($5::float8, 0))
      FROM answered
    RETURNING id, submission_id, url, host, xqueue_header
), notified AS (
    SELECT pg_notify('xqueue_callbacks', '') WHERE $5::float8 IS NULL AND EXISTS (SELECT 1 FROM queued)
)
SELECT q.submission_id, q.id AS callback_id, q.url, q.host, q.xqueue_header,
       (SELECT count(*) FROM notified) AS notified
  FROM queued q;

-- name: submission_key_states
-- Replies record_results did not record ($1 ids): their submission's state and current key. A
-- submission outside the caller's queues ($2, NULL: all) is not found, exactly like a missing one.
SELECT id, state, pullkey FROM submissions
 WHERE id = ANY($1::bigint[]) AND ($2::text[] IS NULL OR queue_name = ANY($2::text[]));

-- name: retire_poison_submissions
-- A submission pulled max_pulls times without a result is retired and the LMS gets upstream's
-- failure notice through the outbox.
WITH poisoned AS (
    UPDATE submissions
       SET state = 'retired', retired_reason = 'poison', finished_at = now(), lease_expires_at = NULL
     WHERE id IN (SELECT id FROM submissions
                   WHERE state = 'pending' AND pull_count >= $1 AND lease_expires_at <= now()
                   LIMIT 500 FOR UPDATE SKIP LOCKED)
    RETURNING id, queue_name, lms_callback_url, xqueue_header
), queued AS (
    INSERT INTO callbacks (submission_id, kind, url, xqueue_header, xqueue_body)
    SELECT id, 'failure_notice', lms_callback_url, xqueue_header, $2 FROM poisoned
    RETURNING id
)
SELECT p.id, p.queue_name, (SELECT count(*) FROM queued) AS queued,
       (SELECT count(*) FROM (SELECT pg_notify('xqueue_callbacks', '') FROM queued) n) AS notified
FROM poisoned p;

-- name: claim_due_callbacks
-- Fair claim: each LMS host (callbacks.host) gets at most $5 deliveries in flight in this process,
-- of which it already has $4[i] for host $3[i]. Hosts with pending rows are listed by a loose index
-- scan and each host's oldest due rows are taken on their own, so neither a host with a large
-- backlog nor one that hangs can take every slot, and a saturated host's rows are not claimed at all
-- (no attempt is spent on them). Each claimed callback becomes invisible for $2 seconds, so a crashed
-- worker's attempt is retried by any replica; attempts counts tries.
WITH RECURSIVE hosts AS (
    (SELECT host FROM callbacks WHERE state = 'pending' ORDER BY host LIMIT 1)
    UNION ALL
    SELECT (SELECT c.host FROM callbacks c WHERE c.state = 'pending' AND c.host > h.host
             ORDER BY c.host LIMIT 1)
      FROM hosts h WHERE h.host IS NOT NULL
), busy AS (
    SELECT * FROM unnest($3::text[], $4::int[]) AS b(host, in_flight)
), due AS (
    SELECT picked.id, picked.next_attempt_at
      FROM hosts h
      LEFT JOIN busy b ON b.host = h.host
      CROSS JOIN LATERAL (
          SELECT c.id, c.next_attempt_at FROM callbacks c
           WHERE c.state = 'pending' AND c.host = h.host AND c.next_attempt_at <= now()
           ORDER BY c.next_attempt_at
           LIMIT greatest($5 - coalesce(b.in_flight, 0), 0)
           FOR UPDATE SKIP LOCKED
      ) picked
     WHERE h.host IS NOT NULL
     ORDER BY picked.next_attempt_at
     LIMIT $1
)
UPDATE callbacks c
   SET attempts = c.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
  FROM due
 WHERE c.id = due.id
RETURNING c.id, c.submission_id, c.kind, c.url, c.host, c.xqueue_header, c.xqueue_body, c.attempts,
          extract(epoch FROM now() - c.created_at)::float8 AS age_seconds;

-- name: mark_callback_delivered
WITH done AS (
    UPDATE callbacks SET state = 'delivered', delivered_at = now(), last_error = NULL
     WHERE id = $1 AND state = 'pending'
    RETURNING submission_id, kind
)
UPDATE submissions s SET state = 'delivered', finished_at = now()
  FROM done
 WHERE s.id = done.submission_id AND done.kind = 'grade' AND s.state = 'answered';

-- name: mark_callbacks_delivered
-- The same for a batch of ids ($1): deliveries finished close together share one statement and commit.
WITH done AS (
    UPDATE callbacks SET state = 'delivered', delivered_at = now(), last_error = NULL
     WHERE id = ANY($1::bigint[]) AND state = 'pending'
    RETURNING submission_id, kind
)
UPDATE submissions s SET state = 'delivered', finished_at = now()
  FROM done
 WHERE s.id = done.submission_id AND done.kind = 'grade' AND s.state = 'answered';

-- name: unclaim_callback
-- A callback claimed by record_result for inline delivery that this process cannot start now (its LMS
-- host is at its bound, or the server is stopping): the attempt is given back, the row is due at once
-- and the outbox workers are told.
WITH released AS (
    UPDATE callbacks SET attempts = greatest(attempts - 1, 0), next_attempt_at = now()
     WHERE id = $1 AND state = 'pending'
    RETURNING id
)
SELECT count(*) AS released, (SELECT count(*) FROM (SELECT pg_notify('xqueue_callbacks', '') FROM released) n)
  FROM released;

-- name: schedule_callback_retry
UPDATE callbacks SET next_attempt_at = now() + make_interval(secs => $2), last_error = $3
 WHERE id = $1 AND state = 'pending';

-- name: mark_callback_dead
-- The delivery horizon has passed: the grade stays in the dead-letter list for a re-delivery command.
WITH dead AS (
    UPDATE callbacks SET state = 'dead', last_error = $2
     WHERE id = $1 AND state = 'pending'
    RETURNING submission_id, kind
)
UPDATE submissions s SET state = 'retired', retired_reason = 'undeliverable', finished_at = now()
  FROM dead
 WHERE s.id = dead.submission_id AND s.state = 'answered';

-- name: list_dead_callbacks
SELECT id, submission_id, kind, url, attempts, created_at, last_error
  FROM callbacks WHERE state = 'dead' ORDER BY id LIMIT $1;

-- name: redeliver_callbacks
-- Puts dead-lettered callbacks (all when $1 is NULL) back in the outbox with a fresh attempt count.
WITH revived AS (
    UPDATE callbacks
       SET state = 'pending', attempts = 0, next_attempt_at = now(), created_at = now()
     WHERE state = 'dead' AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
    RETURNING id, submission_id, kind
), resubmitted AS (
    UPDATE submissions s SET state = 'answered', retired_reason = NULL, finished_at = NULL
      FROM revived
     WHERE s.id = revived.submission_id AND revived.kind = 'grade' AND s.retired_reason = 'undeliverable'
)
SELECT id FROM revived;

-- name: callback_counts
-- The states the gauges show (refreshed every second): each count reads its partial index, not the
-- whole table, which keeps every delivered callback for the retention period.
SELECT 'pending' AS state, count(*) FROM callbacks WHERE state = 'pending'
UNION ALL
SELECT 'dead' AS state, count(*) FROM callbacks WHERE state = 'dead';

-- name: oldest_pending_callback_age
SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
  FROM callbacks WHERE state = 'pending';

-- name: delete_finished_submissions
-- Retention: finished submissions older than the cut-off, with their callbacks (cascade).
-- Returns the file keys so the caller can delete the stored files.
DELETE FROM submissions
 WHERE id IN (SELECT id FROM submissions
               WHERE state <> 'pending' AND finished_at < now() - make_interval(days => $1)
                 AND NOT EXISTS (SELECT 1 FROM callbacks c
                                  WHERE c.submission_id = submissions.id AND c.state = 'pending')
               LIMIT $2)
RETURNING id, files;

-- name: get_secret
SELECT value FROM server_secrets WHERE name = $1;

-- name: get_account_by_username
SELECT id, username, password_hash, is_admin, is_active, pull_queues, submit_queues
  FROM accounts WHERE username = $1;

-- name: upsert_account
-- Create or update. A different password hash ends the account's sessions (as Django does). Callers
-- pass the stored hash back when the password itself is unchanged, so idempotent re-provisioning
-- (the operator's hourly refresh, the Helm admin Job, the users file at start-up) keeps them.
-- (No FOR UPDATE in "previous": a row the same statement updates would then be skipped.)
WITH previous AS (
    SELECT id, password_hash FROM accounts WHERE username = $1
), saved AS (
    INSERT INTO accounts (username, password_hash, is_admin, pull_queues, submit_queues)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (username) DO UPDATE
       SET password_hash = EXCLUDED.password_hash, is_admin = EXCLUDED.is_admin,
           pull_queues = EXCLUDED.pull_queues, submit_queues = EXCLUDED.submit_queues,
           is_active = true, updated_at = now()
    RETURNING id, (xmax = 0) AS created
), ended AS (
    DELETE FROM sessions WHERE account_id IN (SELECT id FROM previous WHERE password_hash <> $2)
    RETURNING 1
)
SELECT id, created, (SELECT count(*) FROM ended) AS sessions_ended FROM saved;

-- name: set_password
-- A password reset ends every session of the account on every replica at once: sessions live here
-- and every request looks its session up.
WITH changed AS (
    UPDATE accounts SET password_hash = $2, updated_at = now() WHERE username = $1 RETURNING id
), ended AS (
    DELETE FROM sessions WHERE account_id IN (SELECT id FROM changed) RETURNING 1
)
SELECT id FROM changed;

-- name: set_account_active
-- Deactivating ends the sessions too (they would be refused anyway: lookups require is_active).
WITH changed AS (
    UPDATE accounts SET is_active = $2, updated_at = now() WHERE username = $1 RETURNING id
), ended AS (
    DELETE FROM sessions WHERE NOT $2 AND account_id IN (SELECT id FROM changed) RETURNING 1
)
SELECT id FROM changed;

-- name: delete_account
DELETE FROM accounts WHERE username = $1 RETURNING id;

-- name: list_accounts
SELECT username, is_admin, is_active, pull_queues, submit_queues, created_at FROM accounts ORDER BY username;

-- name: create_session
INSERT INTO sessions (key_hash, account_id, expires_at)
VALUES ($1, $2, now() + make_interval(secs => $3));

-- name: get_session_account
-- valid_seconds: how long the session lasts yet (a process may remember it no longer than that).
SELECT a.id, a.username, a.is_admin, a.is_active, a.pull_queues, a.submit_queues,
       extract(epoch FROM s.expires_at - now())::float8 AS valid_seconds
  FROM sessions s JOIN accounts a ON a.id = s.account_id
 WHERE s.key_hash = $1 AND s.expires_at > now() AND a.is_active;

-- name: delete_session
DELETE FROM sessions WHERE key_hash = $1;

-- name: delete_expired_sessions
DELETE FROM sessions WHERE expires_at <= now();

-- name: create_token
INSERT INTO api_tokens (token_hash, account_id, pull_queues, submit_queues, expires_at)
VALUES ($1, $2, $3, $4, CASE WHEN $5::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $5) END)
RETURNING id;

-- name: get_token_account
-- touch: last_used_at is older than a minute, so the caller refreshes it (one write per token per
-- minute at most, not one per request).
SELECT a.id, a.username, a.is_admin, a.is_active, a.pull_queues, a.submit_queues,
       t.pull_queues AS token_pull_queues, t.submit_queues AS token_submit_queues, t.id AS token_id,
       (t.last_used_at IS NULL OR t.last_used_at < now() - interval '60 seconds') AS touch
  FROM api_tokens t JOIN accounts a ON a.id = t.account_id
 WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > now()) AND a.is_active;

-- name: touch_token
UPDATE api_tokens SET last_used_at = now() WHERE id = $1;

-- name: list_tokens
-- Metadata only: the secret is never stored, and its digest is not shown either.
SELECT t.id, a.username, t.pull_queues, t.submit_queues, t.created_at, t.expires_at, t.last_used_at,
       (t.expires_at IS NOT NULL AND t.expires_at <= now()) AS expired
  FROM api_tokens t JOIN accounts a ON a.id = t.account_id
 WHERE ($1::text IS NULL OR a.username = $1)
 ORDER BY t.id;

-- name: revoke_tokens
-- By id ($1) or every token of an account ($2). Each request looks its token up here, so a revoked
-- token stops working on every replica at once.
DELETE FROM api_tokens t USING accounts a
 WHERE a.id = t.account_id AND (t.id = ANY($1::bigint[]) OR a.username = $2)
RETURNING t.id;

-- name: login_state
-- One round trip before a password check: the account $1 (NULL columns when unknown), whether the
-- client address $2 logged in to it with the right password within $3 seconds, and the failure
-- windows of the (account, address) pair, the address and the account. ratelimit.py decides.
WITH f AS (
    SELECT scope, failures, extract(epoch FROM now() - window_start)::float8 AS age
      FROM login_failures
     WHERE (scope = 'pair' AND key = $1 || E'\n' || $2) OR (scope = 'address' AND key = $2)
        OR (scope = 'account' AND key = $1)
)
SELECT a.id, a.username, a.password_hash, a.is_admin, a.is_active, a.pull_queues, a.submit_queues,
       EXISTS (SELECT 1 FROM login_known_addresses k
                WHERE k.account_id = a.id AND k.address = $2
                  AND k.last_success_at > now() - make_interval(secs => $3)) AS known_address,
       (SELECT failures FROM f WHERE scope = 'pair') AS pair_failures,
       (SELECT age FROM f WHERE scope = 'pair') AS pair_age,
       (SELECT failures FROM f WHERE scope = 'address') AS address_failures,
       (SELECT age FROM f WHERE scope = 'address') AS address_age,
       (SELECT failures FROM f WHERE scope = 'account') AS account_failures,
       (SELECT age FROM f WHERE scope = 'account') AS account_age
  FROM (SELECT 1) AS one LEFT JOIN accounts a ON a.username = $1;

-- name: record_login_failure
-- Counts one failed check of username $1 from address $2 in each scope; a window older than $3
-- seconds starts over. Rows are always locked in the same scope order, so concurrent calls cannot
-- deadlock.
INSERT INTO login_failures AS f (scope, key, window_start, failures)
VALUES ('account', $1, now(), 1), ('address', $2, now(), 1), ('pair', $1 || E'\n' || $2, now(), 1)
ON CONFLICT (scope, key) DO UPDATE
   SET failures = CASE WHEN f.window_start > now() - make_interval(secs => $3) THEN f.failures + 1 ELSE 1 END,
       window_start = CASE WHEN f.window_start > now() - make_interval(secs => $3) THEN f.window_start
                           ELSE now() END;

-- name: record_login_success
-- Account $1 (username $3) proved its password from address $2: the address becomes known and the
-- pair's failures are forgotten. Called only when the address was not known yet or the pair had
-- failures, so a busy HTTP-Basic client costs no write per request.
WITH cleared AS (
    DELETE FROM login_failures WHERE scope = 'pair' AND key = $3 || E'\n' || $2 RETURNING 1
)
INSERT INTO login_known_addresses (account_id, address, last_success_at)
VALUES ($1, $2, now())
ON CONFLICT (account_id, address) DO UPDATE SET last_success_at = now();

-- name: delete_stale_login_state
-- Housekeeping: failure windows older than a day (every window is far shorter) and addresses not
-- seen for $1 seconds.
WITH windows AS (
    DELETE FROM login_failures WHERE window_start < now() - interval '1 day' RETURNING 1
)
DELETE FROM login_known_addresses WHERE last_success_at < now() - make_interval(secs => $1);
