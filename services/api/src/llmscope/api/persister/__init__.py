"""The persister: telemetry, violations, dead letters and incidents from JetStream into Postgres.

Each stream has a durable consumer; a batch is written in one transaction and acked only after
COMMIT (the consumer acks when the handler returns). Writes are idempotent by event id, so a
redelivered batch stores nothing twice, and the per-minute rollups count each probe once because
they aggregate only the rows the insert actually added (the hourly rollups are folded from the
minute rollups in the background: ``hour_fold``). A large batch of telemetry none of which
is stored yet (the common case) is COPY'd straight into its table, its rollups computed here; one
that COPY finds partly stored (a redelivery) is written again through a temporary table and
``ON CONFLICT DO NOTHING``, the rollups then taken from the rows actually inserted.

Postgres being down is never a reason to drop or dead-letter anything: the consumer holds its
batch and retries with a capped backoff for as long as the outage lasts (one log line when it
starts, a summary a minute, one when it ends; :mod:`llmscope.bus.consumer`). A batch that
Postgres refuses for its data (a value out of range, a NUL in a string, a key too long to index)
is written again one event at a time, so only the events at fault are dead-lettered, each with
Postgres's reason; the rest of the batch is stored.

Runs inside the API process (``LLMSCOPE_PERSISTER=true``) or alone: ``python -m llmscope.api.persister``.

The package is split by concern: ``sql`` (the statements' text), ``rollups`` (a batch's rollups,
series and models computed here), ``writes`` (one batch into Postgres), ``connections``
(connections kept between batches), ``consumers`` (the :class:`Persister` and how it consumes),
``retention``, ``hour_fold`` (the hourly rollups folded from the minutes), ``periodic`` (the
loop both run in), ``collector`` (the garbage collector's setting) and ``standalone``
(``llmscope persister``).
"""

from llmscope.api.persister.collector import GC_YOUNGEST_THRESHOLD, tune_gc
from llmscope.api.persister.connections import KEEP_CONNECTION_S, KeptConnections
from llmscope.api.persister.consumers import (
    FILL_WAIT_S,
    LAG_SAMPLE_S,
    PERSIST_BATCH,
    QUIET_EXPIRES_S,
    SOURCE,
    TELEMETRY_CONCURRENT,
    Persister,
    persister_consumer_options,
)
from llmscope.api.persister.hour_fold import FOLD_EVERY_S, fold_hours, fold_loop
from llmscope.api.persister.retention import RETENTION_TIMEOUT_S, apply_retention, retention_loop
from llmscope.api.persister.sql import (
    STORE_ONE_TELEMETRY,
    STORE_TELEMETRY_ARRAYS,
    TELEMETRY_COLUMNS,
    TELEMETRY_TYPES,
    UPSERT_AGGREGATES,
)
from llmscope.api.persister.standalone import main, run_standalone
from llmscope.api.persister.writes import (
    COPY_MIN_ROWS,
    Conn,
    refused_for_its_data,
    store_dead_letters,
    store_telemetry,
    store_violations,
    telemetry_record,
    violation_record,
)

__all__ = [
    "COPY_MIN_ROWS",
    "FILL_WAIT_S",
    "FOLD_EVERY_S",
    "GC_YOUNGEST_THRESHOLD",
    "KEEP_CONNECTION_S",
    "LAG_SAMPLE_S",
    "PERSIST_BATCH",
    "QUIET_EXPIRES_S",
    "RETENTION_TIMEOUT_S",
    "SOURCE",
    "STORE_ONE_TELEMETRY",
    "STORE_TELEMETRY_ARRAYS",
    "TELEMETRY_COLUMNS",
    "TELEMETRY_CONCURRENT",
    "TELEMETRY_TYPES",
    "UPSERT_AGGREGATES",
    "Conn",
    "KeptConnections",
    "Persister",
    "apply_retention",
    "fold_hours",
    "fold_loop",
    "main",
    "persister_consumer_options",
    "refused_for_its_data",
    "retention_loop",
    "run_standalone",
    "store_dead_letters",
    "store_telemetry",
    "store_violations",
    "telemetry_record",
    "tune_gc",
    "violation_record",
]
