-- The installation's key for the fingerprints the dashboard prints after a hidden target secret
-- (llmscope.web.userinfo: HMAC-SHA256(key, secret), 4 hex digits). Random, made here once by
-- Postgres (gen_random_uuid draws from pg_strong_random; built in since PG 13, no extension):
-- two uuids, 244 random bits, as 32 bytes. One row, so that every API replica loads the same key
-- and a printed link or report stays valid across restarts (fingerprint_key.py). Never printed,
-- sent or logged; it leaves the server only in a backup of the database, which holds the stored
-- targets and their secrets anyway.
CREATE TABLE target_fingerprint_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key bytea NOT NULL CHECK (octet_length(key) >= 16)
);
INSERT INTO target_fingerprint_key (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
