-- One telemetry event as the persister sends a small batch: the batch is one parameter, an array
-- of these, unnested into rows by the one statement that stores it. It was one array per column
-- (35 parameters): Postgres unnested 35 arrays into 35 tuple stores (about a third of the
-- statement for a 4-event batch) and the persister built and encoded 35 lists. The attributes are
-- the persister's TELEMETRY_COLUMNS with telemetry's types, in that order (a test compares them);
-- a column added to telemetry that the persister writes is added here too (ALTER TYPE ... ADD
-- ATTRIBUTE). No table changes: the type only describes a statement's parameter.
CREATE TYPE telemetry_row AS (
    id                      text,
    ts                      timestamptz,
    provider                text,
    model                   text,
    target                  text,
    host                    text,
    prober                  text,
    prompt_id               text,
    prompt_class            text,
    prompt_hash             text,
    prompt_text             text,
    streaming               boolean,
    max_tokens              integer,
    status                  text,
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
    source                  text,
    service_name            text,
    provider_name           text,
    response_model          text,
    error_type              text,
    trace_id                text
);
