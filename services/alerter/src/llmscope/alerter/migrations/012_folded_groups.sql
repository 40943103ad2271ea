-- A per-model group of warnings folded into the incident group of a critical of the same model
-- (store.py, _fold_model_group): its alerts moved there, it closed, and this names the group that
-- carries on, whose first message to each channel the folded group had told refers to that message.
ALTER TABLE alerter_groups ADD COLUMN folded_into bigint;
CREATE INDEX alerter_groups_folded_into_idx ON alerter_groups (folded_into) WHERE folded_into IS NOT NULL;
-- A violation resolved by a person (its incident resolved by hand, or the violation itself through
-- the API) while it still fires: it stops firing for grouping, and the channels it paged are told
-- who resolved it at the group's next flush, brought forward to at once.
ALTER TABLE alerter_alerts
    ADD COLUMN resolved_at   timestamptz,
    ADD COLUMN resolved_by   text,
    ADD COLUMN resolved_note text;
