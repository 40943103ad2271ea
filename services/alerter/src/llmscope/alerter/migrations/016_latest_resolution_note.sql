-- When each note was written, so that an incident shows the latest note by time, as its alerts
-- do: its own resolution's, or a later one on one of its violations (the API's
-- violation_action.v1 event time). NULL: no note, or one written before this was kept.
ALTER TABLE alerter_violation_actions ADD COLUMN note_at timestamptz;
UPDATE alerter_violation_actions SET note_at = coalesce(resolved_at, acknowledged_at, received_at)
WHERE note IS NOT NULL;
ALTER TABLE alerter_incidents ADD COLUMN resolved_note_at timestamptz;
UPDATE alerter_incidents SET resolved_note_at = resolved_at WHERE resolved_note IS NOT NULL;
