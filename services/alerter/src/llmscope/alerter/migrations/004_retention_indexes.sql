-- The retention sweep (retention.py) deletes alerts and incidents. A delete checks each foreign
-- key that points at the row; without these indexes every check scans the referencing table.
CREATE INDEX alerter_group_alerts_episode_idx ON alerter_group_alerts (episode_id);
CREATE INDEX alerter_incident_similar_similar_idx ON alerter_incident_similar (similar_id);
