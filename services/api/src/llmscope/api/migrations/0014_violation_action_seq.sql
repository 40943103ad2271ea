-- The order of a person's actions on a violation episode (violation_action.v1 `seq`): counted in
-- the UPDATE that records each action, so the alerter keeps the newest state whatever order the
-- events reach it in (a redelivery, a replay, the outbox's republishing racing a request's own
-- publish, two API replicas). Rows acted on before count as one action.
ALTER TABLE violations ADD COLUMN action_seq bigint NOT NULL DEFAULT 0;
UPDATE violations SET action_seq = 1 WHERE acknowledged_at IS NOT NULL OR resolved_at IS NOT NULL;
