-- The `seq` of the violation_action.v1 event whose state a row holds (the API's count of the
-- episode's actions): an event is applied only when its seq is higher, so an older one delivered
-- late changes nothing. NULL: only events of an API from before seq (merged as before; any event
-- with a seq is newer than them).
ALTER TABLE alerter_violation_actions ADD COLUMN seq bigint;
