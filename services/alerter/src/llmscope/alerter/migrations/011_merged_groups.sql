-- An alert group of an incident merged into its host's cascade (merge_store.py) that had already
-- told a channel: its next flush sends each such channel one closing message naming the incident
-- that carries on (and resolves its PagerDuty key), then closes the group.
ALTER TABLE alerter_groups ADD COLUMN merged_into text;
