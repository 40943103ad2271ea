-- Every frozen baseline of every chart, as the API saw it in the SPC engine's chart records (KV,
-- one value per chart: the current baseline only). The charts and the comparison mark each
-- re-baseline in their window from here, not only each chart's latest.
CREATE TABLE baseline_history (
    chart_key   text NOT NULL,
    baseline_id text NOT NULL,
    number      integer NOT NULL,
    provider    text NOT NULL,
    model       text NOT NULL,
    target      text NOT NULL,
    prompt_id   text NOT NULL,
    metric      text NOT NULL,
    n           integer NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz,
    created_by  text NOT NULL,
    reason      text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chart_key, baseline_id)
);
CREATE INDEX baseline_history_model_idx ON baseline_history (provider, model, started_at);
