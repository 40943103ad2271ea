-- A person's acknowledgement or hand resolution not yet announced on the bus
-- (violation_action.v1): the outbox of llmscope.api.violation_actions. Set in the same UPDATE
-- that records the action, cleared once JetStream stored the event; the API publishes what is
-- left after a failed publish or a crash, so the alerter (which never reads this table) misses none.
ALTER TABLE violations ADD COLUMN action_pending boolean NOT NULL DEFAULT false;
CREATE INDEX violations_action_pending_idx ON violations (id) WHERE action_pending;
