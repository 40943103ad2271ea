-- The hourly rollups of each series (0011) are folded from the minute rollups in the background
-- (persister/hour_fold.py) instead of being upserted with every event (issue 13: the statement
-- that stores a batch lost one of its three aggregate upserts, a CTE whose set-up alone cost
-- Postgres about a tenth of the statement).
--
-- ``folded``: this minute row, as it is now, is in its hour's row. Every write of a minute row
-- sets it false in the same upsert; the fold sets it true on the unfolded minutes of complete
-- hours and recomputes those hours from their minutes (a replace, so an hour folded twice, or
-- written meanwhile by a persister still on the old code, is still exact). Until then a reader
-- takes such an hour from its minutes (trends.py). Rows stored so far are in their hours already.
ALTER TABLE telemetry_minute ADD COLUMN folded boolean NOT NULL DEFAULT true;
ALTER TABLE telemetry_minute ALTER COLUMN folded SET DEFAULT false;
-- The fold's and the comparison's way to the unfolded minutes (the current hour's, and a late
-- event's): a few rows per series, found per model.
CREATE INDEX telemetry_minute_unfolded_idx ON telemetry_minute (provider, model, minute) WHERE NOT folded;
