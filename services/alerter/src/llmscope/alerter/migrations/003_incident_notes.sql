-- Who acknowledged or resolved an incident may say why (POST /api/incidents/{id}/acknowledge).
ALTER TABLE alerter_incidents ADD COLUMN acknowledged_note text;
ALTER TABLE alerter_incidents ADD COLUMN resolved_note text;
