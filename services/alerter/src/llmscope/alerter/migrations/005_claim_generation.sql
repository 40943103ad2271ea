-- A claim's generation: incremented each time the notification is claimed (taken over after its
-- lease ran out), so renewals, attempts and the final status of a superseded delivery loop (even
-- one of the same instance) no longer count. Fencing by instance name alone let two loops of one
-- replica send the same notification.
ALTER TABLE alerter_notifications ADD COLUMN claim_gen integer NOT NULL DEFAULT 1;
