-- Tickets in the team's tracker (GitHub Issues, Jira, GitLab), one per incident (tickets/sync.py).
-- The row is written, and committed, before the tracker is asked to create anything: a crash
-- between the tracker's answer and the row's update leaves a 'pending' row with create_tries > 0,
-- and the next try first looks the ticket up by its marker instead of creating a second one.
CREATE TABLE alerter_incident_tickets (
    incident_id       text PRIMARY KEY REFERENCES alerter_incidents (id),
    tracker           text NOT NULL,
    marker            text NOT NULL,
    ticket_key        text,  -- GitHub/GitLab issue number, Jira issue key
    url               text,
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'open', 'closed', 'skipped')),
    create_tries      integer NOT NULL DEFAULT 0,
    synced            jsonb NOT NULL DEFAULT '{}',  -- what the ticket says so far (tickets/text.py)
    synced_revision   integer NOT NULL DEFAULT 0,
    resolve_commented boolean NOT NULL DEFAULT false,
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text,
    next_try_at       timestamptz NOT NULL,
    claimed_by        text,
    claim_gen         integer NOT NULL DEFAULT 0,
    lease_until       timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX alerter_incident_tickets_due_idx ON alerter_incident_tickets (next_try_at)
    WHERE state IN ('pending', 'open');

-- A new incident that closely resembles a resolved one (resemblance.py) links it, so its
-- messages and page can show how that one was resolved. No foreign key: retention may delete the
-- old incident, and a dangling link then simply shows nothing.
ALTER TABLE alerter_incidents
    ADD COLUMN resembles_id    text,
    ADD COLUMN resembles_score double precision;
