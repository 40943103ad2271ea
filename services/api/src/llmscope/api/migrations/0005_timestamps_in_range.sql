-- Telemetry is accepted only with a timestamp from 2000 to 2100 (llmscope.proto.base.check_ts).
-- Earlier versions stored whatever came, and a timestamp before year 1 in UTC cannot be read back
-- into Python at all: one such row made the dashboard's model and status pages answer 500 for
-- everyone. Rows outside the window are removed here, and first/last-seen times are bounded to it
-- (a series or model seen only outside the window has no real data and goes too).
DELETE FROM telemetry WHERE ts < '2000-01-01Z' OR ts >= '2100-01-01Z';
DELETE FROM telemetry_minute WHERE minute < '2000-01-01Z' OR minute >= '2100-01-01Z';
DELETE FROM violation_clears WHERE ts < '2000-01-01Z' OR ts >= '2100-01-01Z';
DELETE FROM violations WHERE ts < '2000-01-01Z' OR ts >= '2100-01-01Z';
UPDATE violations SET cleared_at = NULL, cleared_id = NULL
WHERE cleared_at < '2000-01-01Z' OR cleared_at >= '2100-01-01Z';
DELETE FROM series WHERE last_seen < '2000-01-01Z' OR first_seen >= '2100-01-01Z';
UPDATE series SET first_seen = GREATEST(first_seen, '2000-01-01Z'), last_seen = LEAST(last_seen, '2099-12-31Z')
WHERE first_seen < '2000-01-01Z' OR last_seen >= '2100-01-01Z';
DELETE FROM series_targets WHERE last_seen < '2000-01-01Z' OR first_seen >= '2100-01-01Z';
UPDATE series_targets
SET first_seen = GREATEST(first_seen, '2000-01-01Z'), last_seen = LEAST(last_seen, '2099-12-31Z')
WHERE first_seen < '2000-01-01Z' OR last_seen >= '2100-01-01Z';
DELETE FROM models WHERE last_seen < '2000-01-01Z' OR first_seen >= '2100-01-01Z';
UPDATE models SET first_seen = GREATEST(first_seen, '2000-01-01Z'), last_seen = LEAST(last_seen, '2099-12-31Z')
WHERE first_seen < '2000-01-01Z' OR last_seen >= '2100-01-01Z';
