-- Dashboard sessions ended by a logout (issue 9): a session cookie is signed and carries its id,
-- so a copy kept after the logout would still be accepted without this list. Rows are needed
-- only until the session would have expired anyway; the API deletes older ones as it adds new.
CREATE TABLE IF NOT EXISTS revoked_sessions (
    session_id text PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS revoked_sessions_expires ON revoked_sessions (expires_at);
