-- 0005: the status page (xqueue_server/status_api.py) counts results of the last hour per queue by
-- return_time and finds the graders that answered recently. Without this index each page view would
-- scan the whole finished history. return_time is set only by record_result, which already updates
-- indexed columns (state), so the claim hot path keeps its HOT updates.
CREATE INDEX submissions_returned_idx ON submissions (return_time) WHERE return_time IS NOT NULL;
