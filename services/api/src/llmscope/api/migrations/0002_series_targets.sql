-- The SPC engine keeps one chart per provider/model/target/prompt/metric, so the dashboard needs
-- to know which targets (endpoints) serve each subgroup to pick the engine's chart and offer a
-- target selector when a model is served by several.
CREATE TABLE series_targets (
    provider   text NOT NULL,
    model      text NOT NULL,
    prompt_id  text NOT NULL,
    target     text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    PRIMARY KEY (provider, model, prompt_id, target)
);

INSERT INTO series_targets (provider, model, prompt_id, target, first_seen, last_seen)
SELECT provider, model, prompt_id, target, min(ts), max(ts) FROM telemetry GROUP BY 1, 2, 3, 4;
