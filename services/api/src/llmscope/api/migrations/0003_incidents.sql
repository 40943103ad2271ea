-- Incidents as the alerter publishes them (incident.v1 on LLMSCOPE_INCIDENTS): one row per
-- incident at its highest revision seen, so a replayed or out-of-order event changes nothing.
CREATE TABLE incidents (
    id                text PRIMARY KEY,
    revision          integer NOT NULL,
    event_id          text NOT NULL,
    change            text NOT NULL,
    state             text NOT NULL,
    title             text NOT NULL,
    severity          text NOT NULL,
    provider          text NOT NULL,
    host              text NOT NULL DEFAULT '',
    models            text[] NOT NULL,
    cascade           boolean NOT NULL DEFAULT false,
    episode_ids       text[] NOT NULL DEFAULT '{}',
    violation_count   integer NOT NULL DEFAULT 0,
    opened_at         timestamptz NOT NULL,
    last_violation_at timestamptz,
    acknowledged_at   timestamptz,
    acknowledged_by   text,
    resolved_at       timestamptz,
    resolved_by       text,
    llm_status        text NOT NULL DEFAULT 'disabled',
    event             jsonb NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incidents_opened_idx ON incidents (opened_at DESC, id DESC);
CREATE INDEX incidents_state_idx ON incidents (state, opened_at DESC);
CREATE INDEX incidents_models_idx ON incidents USING gin (models);
CREATE INDEX incidents_episodes_idx ON incidents USING gin (episode_ids);
