-- Hourly rollups per model (every prompt and target pooled), maintained by the persister in the
-- same statement as the minute rollups. The comparison chart over 7 or 30 days reads these: a
-- 7-day chart of 4 models read 240k minute rows (~0.9 s on a laptop), it reads 670 hour rows.
CREATE TABLE telemetry_hour (
    provider       text NOT NULL,
    model          text NOT NULL,
    hour           timestamptz NOT NULL,
    n              integer NOT NULL,
    n_ok           integer NOT NULL,
    latency_n      integer NOT NULL DEFAULT 0,
    latency_min    double precision,
    latency_max    double precision,
    latency_sum    double precision NOT NULL DEFAULT 0,
    latency_logsum double precision NOT NULL DEFAULT 0,
    ttft_n         integer NOT NULL DEFAULT 0,
    ttft_min       double precision,
    ttft_max       double precision,
    ttft_sum       double precision NOT NULL DEFAULT 0,
    ttft_logsum    double precision NOT NULL DEFAULT 0,
    tps_n          integer NOT NULL DEFAULT 0,
    tps_min        double precision,
    tps_max        double precision,
    tps_sum        double precision NOT NULL DEFAULT 0,
    tps_logsum     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, model, hour)
);
CREATE INDEX telemetry_hour_hour_idx ON telemetry_hour (hour);

-- The history already rolled up by minute, folded into hours once.
INSERT INTO telemetry_hour
SELECT provider, model, date_trunc('hour', minute), sum(n), sum(n_ok),
       sum(latency_n), min(latency_min), max(latency_max), sum(latency_sum), sum(latency_logsum),
       sum(ttft_n), min(ttft_min), max(ttft_max), sum(ttft_sum), sum(ttft_logsum),
       sum(tps_n), min(tps_min), max(tps_max), sum(tps_sum), sum(tps_logsum)
FROM telemetry_minute GROUP BY 1, 2, 3;
