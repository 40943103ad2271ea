-- The hourly rollups per model (0008) are the sums of the hourly rollups per series (0011) over
-- the model's prompts and targets: the comparison reads those instead, grouped by model, and the
-- persister no longer writes a model-hour row per event (a tuple lock, a HOT update and its
-- prune in the WAL each time; issue 13). Nothing is lost: 0011 folded every minute rollup still
-- stored into telemetry_series_hour, the minute rollups then held every hour this table did
-- (both are deleted after LLMSCOPE_RETENTION_ROLLUP_DAYS), and since 0011 the persister wrote
-- both tables in one statement.
DROP TABLE telemetry_hour;
