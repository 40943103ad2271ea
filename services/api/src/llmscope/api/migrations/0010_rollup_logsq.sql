-- The sum of squared logs per metric in both rollups: with the sum of logs and n, the spread of
-- the log values, so the comparison draws each model's p50-p95 band (lognormal) from the rollups.
-- Rows written before this have 0: their buckets draw no band (the comparison checks the
-- variance it derives), the line and the min/max stay as they were.
ALTER TABLE telemetry_minute
    ADD COLUMN latency_logsq double precision NOT NULL DEFAULT 0,
    ADD COLUMN ttft_logsq    double precision NOT NULL DEFAULT 0,
    ADD COLUMN tps_logsq     double precision NOT NULL DEFAULT 0;
ALTER TABLE telemetry_hour
    ADD COLUMN latency_logsq double precision NOT NULL DEFAULT 0,
    ADD COLUMN ttft_logsq    double precision NOT NULL DEFAULT 0,
    ADD COLUMN tps_logsq     double precision NOT NULL DEFAULT 0;
