-- The SPC engine charts each target (endpoint) apart, and so does the dashboard's raw view; the
-- per-minute rollups behind windows over 2 h now keep targets apart too. Rows written before
-- this migration have no target (''): they still show for a model served by one target, and
-- age out with LLMSCOPE_RETENTION_ROLLUP_DAYS.
ALTER TABLE telemetry_minute ADD COLUMN target text NOT NULL DEFAULT '';
ALTER TABLE telemetry_minute DROP CONSTRAINT telemetry_minute_pkey;
ALTER TABLE telemetry_minute ADD PRIMARY KEY (provider, model, prompt_id, target, minute);
