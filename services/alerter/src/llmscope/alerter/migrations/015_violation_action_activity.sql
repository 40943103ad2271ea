-- When an event of the episode's actions last came (applied or not): the retention sweeps an
-- action row by its last activity, and never while the episode's alert is still kept. Swept by
-- its first `received_at`, an episode still open (or replayed) 90 days after its first action
-- no longer saw its acknowledgement or hand resolution.
ALTER TABLE alerter_violation_actions ADD COLUMN last_event_at timestamptz NOT NULL DEFAULT now();
UPDATE alerter_violation_actions SET last_event_at = received_at;
