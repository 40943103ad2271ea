-- What the OTLP receiver knows about a request of real traffic (telemetry.v1 fields added later
-- in v1, see llmscope.proto.telemetry). Every existing row is a probe, which the defaults say;
-- adding a column with a constant default rewrites no rows.
ALTER TABLE telemetry
    ADD COLUMN source text NOT NULL DEFAULT 'probe',
    ADD COLUMN service_name text NOT NULL DEFAULT '',
    ADD COLUMN provider_name text NOT NULL DEFAULT '',
    ADD COLUMN response_model text NOT NULL DEFAULT '',
    ADD COLUMN error_type text,
    ADD COLUMN trace_id text NOT NULL DEFAULT '';

-- From a trace in the application's tracing tool to its row here (probes have no trace: left out).
CREATE INDEX telemetry_trace_idx ON telemetry (trace_id) WHERE trace_id <> '';
