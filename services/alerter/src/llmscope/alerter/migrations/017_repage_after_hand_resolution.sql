-- A violation resolved by hand while its episode still fires in the engine is paged again when
-- no clear came LLMSCOPE_ALERTER_REPAGE_AFTER_RESOLVE_S after the resolution: the alert fires
-- again (resolved_* emptied) and keeps who resolved it, when and with what note, for the
-- message ("still failing after it was resolved by ana at 12:03 UTC"). repaged_at: when it was
-- paged again; a hand resolution is re-paged once (the UPDATE that moves it is the claim).
-- hand_resolved_applied_at: when the alerter applied the resolution (told the channels); the
-- delay counts from it, not from the person's time (an action delivered late, or backdated,
-- must first be told as a resolution, not paged again at once).
ALTER TABLE alerter_alerts ADD COLUMN hand_resolved_applied_at timestamptz;
-- Hand resolutions made before this migration keep it NULL and are never paged again: they were
-- made when a hand resolution meant quiet until the clear, and an upgrade must not page them all.
ALTER TABLE alerter_alerts ADD COLUMN repaged_at timestamptz;
ALTER TABLE alerter_alerts ADD COLUMN repage_of_at timestamptz;
ALTER TABLE alerter_alerts ADD COLUMN repage_of_by text;
ALTER TABLE alerter_alerts ADD COLUMN repage_of_note text;
-- The dispatch tick's look for hand resolutions whose episode has not cleared.
CREATE INDEX alerter_alerts_hand_resolved_open_idx ON alerter_alerts (hand_resolved_applied_at)
    WHERE cleared_at IS NULL AND resolved_at IS NOT NULL;
