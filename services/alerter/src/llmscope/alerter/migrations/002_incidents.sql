CREATE TABLE alerter_incidents (
    id                    text PRIMARY KEY,
    state                 text NOT NULL CHECK (state IN ('open', 'acknowledged', 'resolved')),
    title                 text NOT NULL,
    severity              text NOT NULL,
    provider              text NOT NULL,
    host                  text NOT NULL DEFAULT '',
    models                text[] NOT NULL,
    cascade               boolean NOT NULL DEFAULT false,
    opened_at             timestamptz NOT NULL,
    last_violation_at     timestamptz NOT NULL,
    acknowledged_at       timestamptz,
    acknowledged_by       text,
    resolved_at           timestamptz,
    resolved_by           text,
    revision              integer NOT NULL DEFAULT 1,
    summary               text NOT NULL DEFAULT '',
    analysis              jsonb,
    analysis_status       text NOT NULL DEFAULT 'pending' CHECK (analysis_status IN ('pending', 'done')),
    analysis_due_at       timestamptz,
    analysis_lease_until  timestamptz,
    search_text           text NOT NULL DEFAULT ''
);
CREATE INDEX alerter_incidents_open_idx ON alerter_incidents (provider, last_violation_at) WHERE state <> 'resolved';
CREATE INDEX alerter_incidents_fts_idx ON alerter_incidents USING gin (to_tsvector('english', search_text));

CREATE TABLE alerter_incident_episodes (
    episode_id  text PRIMARY KEY REFERENCES alerter_alerts (episode_id),
    incident_id text NOT NULL REFERENCES alerter_incidents (id)
);
CREATE INDEX alerter_incident_episodes_incident_idx ON alerter_incident_episodes (incident_id);

CREATE TABLE alerter_incident_similar (
    incident_id text NOT NULL REFERENCES alerter_incidents (id),
    similar_id  text NOT NULL REFERENCES alerter_incidents (id),
    score       double precision NOT NULL,
    PRIMARY KEY (incident_id, similar_id)
);

-- Trigram similarity when the contrib extension is available; full-text ranking otherwise.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    CREATE INDEX alerter_incidents_trgm_idx ON alerter_incidents USING gin (search_text gin_trgm_ops);
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'pg_trgm unavailable (%): similar incidents use full-text ranking', SQLERRM;
END
$$;
