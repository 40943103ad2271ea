-- The control chart's violation marks (issue 13): per severity, the newest of one chart's window,
-- and how many there are, read from this index alone (an index-only scan: the heap rows carry the
-- whole event and are ~2 KB each). A noisy day of one chart was ~2,600 heap visits for 250 marks.
CREATE INDEX violations_marks_idx ON violations (provider, model, prompt_id, metric, target, severity, ts DESC)
    INCLUDE (id, value, rule, cleared_at);
