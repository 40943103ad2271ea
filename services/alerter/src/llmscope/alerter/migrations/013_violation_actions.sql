-- People's acknowledgements and hand resolutions of violations, as the API announces them on
-- the bus (violation_action.v1): the alerter's own copy, so that it never reads the API's
-- `violations` table. Kept per episode (the first acknowledgement and resolution win, as in the
-- API) because an action may arrive before its violation does: the alert picks it up when it
-- is recorded (acknowledgement) or at the next dispatch tick (hand resolution).
CREATE TABLE alerter_violation_actions (
    episode_id      text PRIMARY KEY,
    acknowledged_by text,
    acknowledged_at timestamptz,
    resolved_by     text,
    resolved_at     timestamptz,
    note            text,
    received_at     timestamptz NOT NULL DEFAULT now()
);
-- The dispatch tick's look for hand resolutions not applied yet.
CREATE INDEX alerter_violation_actions_resolved_idx ON alerter_violation_actions (episode_id)
    WHERE resolved_at IS NOT NULL;
