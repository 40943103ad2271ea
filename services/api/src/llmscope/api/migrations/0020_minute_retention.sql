-- The minute rollups may be kept for less time than the hourly rollups they are folded into
-- (LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS, persister/retention.py). An hour whose minutes are
-- gone can no longer be recomputed from them (the fold's replace would shrink it to the minutes
-- left), so retention deletes a series-hour's minutes all at once, only once every one is folded,
-- and sets ``minutes_pruned`` on its hour row in the same transaction. From then on a late
-- event's minute in that hour is added to the hour row and deleted (persister/hour_fold.py), and
-- a reader adds such a minute to the hour row instead of reading the hour from its minutes
-- (trends.SERIES_HOURS). A constant default: no rewrite of the table.
ALTER TABLE telemetry_series_hour ADD COLUMN minutes_pruned boolean NOT NULL DEFAULT false;
