-- 0003: API tokens record when they were last used (refreshed at most once a minute), so
-- `xqueue-admin list-tokens` and GET /api/v1/tokens can show stale tokens worth revoking.
ALTER TABLE api_tokens ADD COLUMN last_used_at timestamptz;
