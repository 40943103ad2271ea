-- LLMscope's store: raw telemetry, per-minute rollups for charts, violation episodes, models,
-- settings and dead letters. Applied once, in a transaction, under an advisory lock.

CREATE TABLE telemetry (
    id                      text PRIMARY KEY,
    ts                      timestamptz NOT NULL,
    provider                text NOT NULL,
    model                   text NOT NULL,
    target                  text NOT NULL,
    host                    text NOT NULL DEFAULT '',
    prober                  text NOT NULL DEFAULT '',
    prompt_id               text NOT NULL,
    prompt_class            text NOT NULL DEFAULT '',
    prompt_hash             text NOT NULL,
    prompt_text             text,
    streaming               boolean NOT NULL DEFAULT false,
    max_tokens              integer,
    status                  text NOT NULL,
    error                   text,
    http_status             smallint,
    latency_ms              double precision,
    ttft_ms                 double precision,
    total_duration_ms       double precision,
    load_duration_ms        double precision,
    prompt_eval_duration_ms double precision,
    eval_duration_ms        double precision,
    prompt_eval_count       integer,
    eval_count              integer,
    tokens_per_s            double precision,
    cpu_percent             real,
    memory_percent          real,
    gpu_percent             real,
    gpu_memory_percent      real,
    received_at             timestamptz NOT NULL DEFAULT now()
);

-- Charts read one rational subgroup over a window: a covering index keeps that to index pages
-- (PERFORMANCE.md: ~6x faster than a plain btree when models interleave in time).
CREATE INDEX telemetry_chart_idx ON telemetry (provider, model, prompt_id, ts)
    INCLUDE (status, latency_ms, ttft_ms, tokens_per_s);
CREATE INDEX telemetry_ts_idx ON telemetry (ts);

-- Per-minute rollups, maintained by the persister in the same transaction as the raw rows, so a
-- 24 h chart reads 1,440 rows instead of 43,200. Latency statistics cover successful probes only.
CREATE TABLE telemetry_minute (
    provider      text NOT NULL,
    model         text NOT NULL,
    prompt_id     text NOT NULL,
    minute        timestamptz NOT NULL,
    n             integer NOT NULL,
    n_ok          integer NOT NULL,
    latency_n     integer NOT NULL DEFAULT 0,
    latency_min   double precision,
    latency_max   double precision,
    latency_sum   double precision NOT NULL DEFAULT 0,
    latency_logsum double precision NOT NULL DEFAULT 0,
    ttft_n        integer NOT NULL DEFAULT 0,
    ttft_min      double precision,
    ttft_max      double precision,
    ttft_sum      double precision NOT NULL DEFAULT 0,
    ttft_logsum   double precision NOT NULL DEFAULT 0,
    tps_n         integer NOT NULL DEFAULT 0,
    tps_min       double precision,
    tps_max       double precision,
    tps_sum       double precision NOT NULL DEFAULT 0,
    tps_logsum    double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, model, prompt_id, minute)
);
CREATE INDEX telemetry_minute_minute_idx ON telemetry_minute (minute);

-- One row per chart subgroup the dashboard can show.
CREATE TABLE series (
    provider   text NOT NULL,
    model      text NOT NULL,
    prompt_id  text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (provider, model, prompt_id)
);

CREATE TABLE models (
    provider           text NOT NULL,
    model              text NOT NULL,
    enabled            boolean NOT NULL DEFAULT true,
    first_seen         timestamptz NOT NULL,
    last_seen          timestamptz NOT NULL,
    target             text NOT NULL DEFAULT '',
    host               text NOT NULL DEFAULT '',
    last_status        text NOT NULL DEFAULT '',
    cpu_percent        real,
    memory_percent     real,
    gpu_percent        real,
    gpu_memory_percent real,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, model)
);

-- A violation episode: the row is the `open` event; its `cleared` event sets cleared_at.
CREATE TABLE violations (
    id              text PRIMARY KEY,
    episode_id      text NOT NULL,
    ts              timestamptz NOT NULL,
    provider        text NOT NULL,
    model           text NOT NULL,
    target          text NOT NULL DEFAULT '',
    host            text NOT NULL DEFAULT '',
    prompt_id       text NOT NULL DEFAULT '',
    metric          text NOT NULL,
    chart           text NOT NULL,
    chart_key       text NOT NULL DEFAULT '',
    rule            text NOT NULL,
    rule_name       text NOT NULL DEFAULT '',
    severity        text NOT NULL,
    value           double precision NOT NULL,
    statistic       double precision,
    deviation_sigma double precision NOT NULL,
    transform       text NOT NULL,
    center          double precision NOT NULL,
    sigma           double precision NOT NULL,
    ucl             double precision NOT NULL,
    lcl             double precision NOT NULL,
    zone_a_upper    double precision NOT NULL,
    zone_a_lower    double precision NOT NULL,
    zone_b_upper    double precision NOT NULL,
    zone_b_lower    double precision NOT NULL,
    baseline_id     text NOT NULL,
    baseline_n      integer NOT NULL,
    point_ids       text[] NOT NULL,
    event           jsonb NOT NULL,
    cleared_at      timestamptz,
    cleared_id      text,
    acknowledged_by text,
    acknowledged_at timestamptz,
    resolved_by     text,
    resolved_at     timestamptz,
    note            text,
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX violations_ts_idx ON violations (ts DESC, id DESC);
CREATE INDEX violations_model_idx ON violations (provider, model, ts DESC);
CREATE INDEX violations_chart_idx ON violations (provider, model, prompt_id, metric, ts DESC);
CREATE INDEX violations_open_idx ON violations (ts DESC) WHERE cleared_at IS NULL;

-- Every `cleared` event as received (it may arrive before its `open` after a redelivery).
CREATE TABLE violation_clears (
    id          text PRIMARY KEY,
    episode_id  text NOT NULL,
    ts          timestamptz NOT NULL,
    event       jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX violation_clears_episode_idx ON violation_clears (episode_id);

CREATE TABLE settings (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL DEFAULT ''
);

CREATE TABLE dead_letters (
    id               text PRIMARY KEY,
    ts               timestamptz NOT NULL,
    source           text NOT NULL,
    subject          text NOT NULL,
    reason           text NOT NULL,
    payload          text NOT NULL,
    payload_encoding text NOT NULL,
    stream_seq       bigint,
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_ts_idx ON dead_letters (ts DESC);
