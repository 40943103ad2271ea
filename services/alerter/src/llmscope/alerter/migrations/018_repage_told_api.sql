-- A violation paged again after a hand resolution is told to the API (llmscope.proto.repage,
-- request/reply) until an API answers, so that its copy there reads open again even when no
-- incident.v1 event names it (a warning paged outside any incident). repage_told_api_at: the
-- repaged_at the API was told of; NULL or another (an older page again): not told yet. Alerts
-- paged again before this migration are told once at the upgrade: the API reopens only a
-- resolution made before the page again, so those it learnt of from their incident stay as they are.
ALTER TABLE alerter_alerts ADD COLUMN repage_told_api_at timestamptz;
-- The look for pages again still firing that the API has not been told of.
CREATE INDEX alerter_alerts_repage_untold_idx ON alerter_alerts (repaged_at)
    WHERE repaged_at IS NOT NULL AND repage_told_api_at IS DISTINCT FROM repaged_at
        AND cleared_at IS NULL AND resolved_at IS NULL;
