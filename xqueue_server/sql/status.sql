-- The status page's queries (xqueue_server/status_api.py), each under a "-- name:" line.
-- Every query takes $1: the queue names the caller may see (NULL: every queue, for admins), so a
-- queue outside the caller's scope is never read, let alone shown.

-- name: queue_names
SELECT name FROM queues ORDER BY name;

-- name: queue_summary
-- waiting: pullable now; in_flight: pulled with a lease still valid (as queue_stats in queries.sql).
-- Reads only pending rows (submissions_pending_idx), never the finished history.
SELECT q.name,
       count(s.id) FILTER (WHERE s.lease_expires_at IS NULL OR s.lease_expires_at <= now()) AS waiting,
       count(s.id) FILTER (WHERE s.lease_expires_at > now()) AS in_flight,
       extract(epoch FROM now() - min(s.arrival_time)
               FILTER (WHERE s.lease_expires_at IS NULL OR s.lease_expires_at <= now()))::float8
           AS oldest_waiting_seconds
  FROM queues q
  LEFT JOIN submissions s ON s.queue_name = q.name AND s.state = 'pending'
 WHERE $1::text[] IS NULL OR q.name = ANY($1::text[])
 GROUP BY q.name
 ORDER BY q.name;

-- name: activity
-- What happened in the last $2 seconds, counted per queue, $3-second bucket (0 = the newest) and outcome:
--   graded: a grader put a result (at its return_time);
--   error:  a result whose message reports an error (xqueue-watcher's and our grader's
--           class="result-errors" block: the student's code crashed or hit a limit, or the course's
--           grader failed);
--   failed: no grade reached the LMS: retired as poison (pulled max_pulls times without a result;
--           the LMS got the failure notice) or its grade callback was dead-lettered (at finished_at).
-- A dead-lettered grade therefore counts twice: graded when it was graded, failed when delivery gave up.
-- Index use: submissions_returned_idx (migration 0005) and submissions_finished_idx.
WITH recent AS (
    SELECT queue_name, return_time AS at,
           CASE WHEN grader_reply LIKE '%result-errors%' THEN 'error' ELSE 'graded' END AS outcome
      FROM submissions
     WHERE return_time IS NOT NULL AND return_time > now() - make_interval(secs => $2)
       AND ($1::text[] IS NULL OR queue_name = ANY($1::text[]))
    UNION ALL
    SELECT queue_name, finished_at, 'failed'
      FROM submissions
     WHERE state <> 'pending' AND finished_at > now() - make_interval(secs => $2)
       AND retired_reason IN ('poison', 'undeliverable')
       AND ($1::text[] IS NULL OR queue_name = ANY($1::text[]))
)
SELECT queue_name, greatest(floor(extract(epoch FROM now() - at) / $3), 0)::int AS bucket, outcome,
       count(*) AS n
  FROM recent
 GROUP BY 1, 2, 3;

-- name: graders
-- Graders seen in the last $2 seconds: those holding a lease now, and those that pulled recently
-- (graded since, or still holding it). grader_id is the puller's address (the pod IP in a cluster).
-- Index use: submissions_pending_idx and submissions_returned_idx; pulled_at itself is not indexed
-- (an index on it would cost every claim its HOT update).
SELECT queue_name, coalesce(grader_id, '') AS grader_id,
       count(*) FILTER (WHERE state = 'pending' AND lease_expires_at > now()) AS in_flight,
       extract(epoch FROM now() - max(pulled_at))::float8 AS last_pull_age_seconds
  FROM (
    SELECT queue_name, grader_id, state, lease_expires_at, pulled_at
      FROM submissions
     WHERE state = 'pending' AND pulled_at IS NOT NULL
       AND (lease_expires_at > now() OR pulled_at > now() - make_interval(secs => $2))
       AND ($1::text[] IS NULL OR queue_name = ANY($1::text[]))
    UNION ALL
    SELECT queue_name, grader_id, state, lease_expires_at, pulled_at
      FROM submissions
     WHERE return_time IS NOT NULL AND return_time > now() - make_interval(secs => $2)
       AND state <> 'pending' AND pulled_at > now() - make_interval(secs => $2)
       AND ($1::text[] IS NULL OR queue_name = ANY($1::text[]))
  ) seen
 GROUP BY queue_name, coalesce(grader_id, '')
 ORDER BY queue_name, grader_id;

-- name: dead_letters
-- Dead-lettered callbacks (the LMS never took them; `xqueue-admin redeliver` retries them) per
-- queue: the total, and the newest $2 of each queue with their last error.
SELECT queue_name, total, id, submission_id, kind, attempts, age_seconds, last_error
  FROM (
    SELECT s.queue_name, c.id, c.submission_id, c.kind, c.attempts, c.last_error,
           extract(epoch FROM now() - c.created_at)::float8 AS age_seconds,
           count(*) OVER (PARTITION BY s.queue_name) AS total,
           row_number() OVER (PARTITION BY s.queue_name ORDER BY c.id DESC) AS newest
      FROM callbacks c
      JOIN submissions s ON s.id = c.submission_id
     WHERE c.state = 'dead' AND ($1::text[] IS NULL OR s.queue_name = ANY($1::text[]))
  ) d
 WHERE newest <= $2
 ORDER BY queue_name, id DESC;

-- name: outbox
-- Server-wide callback outbox (admins only: it spans every queue). Partial indexes on state.
SELECT (SELECT count(*) FROM callbacks WHERE state = 'pending') AS pending,
       (SELECT extract(epoch FROM now() - min(created_at))::float8
          FROM callbacks WHERE state = 'pending') AS oldest_pending_seconds,
       (SELECT count(*) FROM callbacks WHERE state = 'dead') AS dead;
