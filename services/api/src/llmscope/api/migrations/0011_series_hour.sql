-- Hourly rollups per series (a model's prompt on one target), written by the persister in the
-- same statement as the minute and model-hour rollups. The comparison of one model's prompts or
-- targets over 7 or 30 days reads these: 30 days of that model's minute rollups were 260k rows
-- (over 2 s at load 10), the same window here is 4,320 (3 prompts x 2 targets x 720 hours).
CREATE TABLE telemetry_series_hour (
    provider       text NOT NULL,
    model          text NOT NULL,
    prompt_id      text NOT NULL,
    target         text NOT NULL,
    hour           timestamptz NOT NULL,
    n              integer NOT NULL,
    n_ok           integer NOT NULL,
    latency_n      integer NOT NULL DEFAULT 0,
    latency_min    double precision,
    latency_max    double precision,
    latency_sum    double precision NOT NULL DEFAULT 0,
    latency_logsum double precision NOT NULL DEFAULT 0,
    latency_logsq  double precision NOT NULL DEFAULT 0,
    ttft_n         integer NOT NULL DEFAULT 0,
    ttft_min       double precision,
    ttft_max       double precision,
    ttft_sum       double precision NOT NULL DEFAULT 0,
    ttft_logsum    double precision NOT NULL DEFAULT 0,
    ttft_logsq     double precision NOT NULL DEFAULT 0,
    tps_n          integer NOT NULL DEFAULT 0,
    tps_min        double precision,
    tps_max        double precision,
    tps_sum        double precision NOT NULL DEFAULT 0,
    tps_logsum     double precision NOT NULL DEFAULT 0,
    tps_logsq      double precision NOT NULL DEFAULT 0,
    -- The hour before the prompt and target: a model's window is one range of the key, however
    -- long the model's history (the comparison reads one model over a window).
    PRIMARY KEY (provider, model, hour, prompt_id, target)
);
CREATE INDEX telemetry_series_hour_hour_idx ON telemetry_series_hour (hour);

-- The history already rolled up by minute, folded into hours once.
INSERT INTO telemetry_series_hour AS m (provider, model, prompt_id, target, hour, n, n_ok,
    latency_n, latency_min, latency_max, latency_sum, latency_logsum, latency_logsq,
    ttft_n, ttft_min, ttft_max, ttft_sum, ttft_logsum, ttft_logsq,
    tps_n, tps_min, tps_max, tps_sum, tps_logsum, tps_logsq)
SELECT provider, model, prompt_id, target, date_trunc('hour', minute), sum(n), sum(n_ok),
       sum(latency_n), min(latency_min), max(latency_max), sum(latency_sum), sum(latency_logsum),
       sum(latency_logsq),
       sum(ttft_n), min(ttft_min), max(ttft_max), sum(ttft_sum), sum(ttft_logsum), sum(ttft_logsq),
       sum(tps_n), min(tps_min), max(tps_max), sum(tps_sum), sum(tps_logsum), sum(tps_logsq)
FROM telemetry_minute GROUP BY 1, 2, 3, 4, 5
ON CONFLICT DO NOTHING;
