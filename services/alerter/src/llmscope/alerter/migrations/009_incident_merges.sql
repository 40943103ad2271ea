-- Incidents merged into a host's cascade (merging.py): the absorbed one is resolved and names the
-- incident that carries on. A new incident opened by a lone one-point signal while another model
-- of its host has an open incident holds its first message (and its ticket) until held_until.
ALTER TABLE alerter_incidents
    ADD COLUMN merged_into text,
    ADD COLUMN held_until  timestamptz;
CREATE INDEX alerter_incidents_host_open_idx ON alerter_incidents (host) WHERE state <> 'resolved';
