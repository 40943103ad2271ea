-- When a person last changed the episode's human state (an acknowledgement, a resolution, a new
-- note): the violation_action.v1 event's `ts`. It was the first acknowledgement's or resolution's
-- time, which the API never changes, so a note written later reached the alerter dated then and
-- an incident could not tell it was the latest. Rows acted on before: their action's time.
ALTER TABLE violations ADD COLUMN action_at timestamptz;
UPDATE violations SET action_at = coalesce(resolved_at, acknowledged_at)
WHERE acknowledged_at IS NOT NULL OR resolved_at IS NOT NULL;
