"""The persister's statements: telemetry's one-event, array and aggregate forms, violations and
dead letters."""

from __future__ import annotations

from llmscope.api.series_seen import SEEN_GRAIN

TELEMETRY_COLUMNS: tuple[str, ...] = (
    "id",
    "ts",
    "provider",
    "model",
    "target",
    "host",
    "prober",
    "prompt_id",
    "prompt_class",
    "prompt_hash",
    "prompt_text",
    "streaming",
    "max_tokens",
    "status",
    "error",
    "http_status",
    "latency_ms",
    "ttft_ms",
    "total_duration_ms",
    "load_duration_ms",
    "prompt_eval_duration_ms",
    "eval_duration_ms",
    "prompt_eval_count",
    "eval_count",
    "tokens_per_s",
    "cpu_percent",
    "memory_percent",
    "gpu_percent",
    "gpu_memory_percent",
    # Real traffic (migrations/0006_telemetry_traffic.sql); a probe's are its defaults.
    "source",
    "service_name",
    "provider_name",
    "response_model",
    "error_type",
    "trace_id",
)

_COLS = ", ".join(TELEMETRY_COLUMNS)

# Postgres types of TELEMETRY_COLUMNS (migrations/0001_initial.sql): the one-event statement's
# parameters, and the attributes of the type a small batch is sent as (0017_telemetry_row.sql).
TELEMETRY_TYPES: dict[str, str] = {
    **dict.fromkeys(TELEMETRY_COLUMNS, "text"),
    "ts": "timestamptz",
    "streaming": "boolean",
    "max_tokens": "integer",
    "http_status": "smallint",
    **dict.fromkeys(
        (
            "latency_ms",
            "ttft_ms",
            "total_duration_ms",
            "load_duration_ms",
            "prompt_eval_duration_ms",
            "eval_duration_ms",
            "tokens_per_s",
        ),
        "double precision",
    ),
    "prompt_eval_count": "integer",
    "eval_count": "integer",
    **dict.fromkeys(("cpu_percent", "memory_percent", "gpu_percent", "gpu_memory_percent"), "real"),
}


# Made once per connection and emptied at each COMMIT (a CREATE and DROP per transaction cost
# ~10 ms, a fifth of a 500-event batch's write). Created inside the writing transaction, so it is
# there whatever connection a pool (or a transaction-mode pgbouncer) hands out.
CREATE_TELEMETRY_IN = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_in (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)

# Every write takes its row locks in one order, whatever the database's collation: telemetry rows
# by id, then each rollup, series and model row by its key, text compared by code point (COLLATE
# "C", the order of Python's ``sorted``, which orders the rows a COPY and UPSERT_AGGREGATES send).
# Two transactions that insert the same ids (a redelivery's twins in two batches stored at once,
# or in two persisters) then never each hold a row the other waits for.
_ID_ORDER = 'id COLLATE "C"'


def _key_order(*cols: str) -> str:
    return ", ".join(c if c.isdigit() else f'{c} COLLATE "C"' for c in cols)


# The rows of a large batch that no write stored yet (a redelivery's COPY found some there): sent
# to a temporary table, inserted in id order, and their ids returned so that only those are
# folded into the rollups (by UPSERT_AGGREGATES, after, under the persister's ``serial`` lock).
INSERT_NEW_TELEMETRY = f"""
INSERT INTO telemetry ({_COLS})
SELECT DISTINCT ON ({_ID_ORDER}) {_COLS} FROM telemetry_in ORDER BY {_ID_ORDER}
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# A small batch is one parameter: an array of telemetry_row (migrations/0017_telemetry_row.sql,
# TELEMETRY_COLUMNS in order), one record per event. One array per column (35 parameters) made
# Postgres unnest 35 arrays into 35 tuple stores, a third of the statement's time for a 4-event
# batch, and the persister build and encode 35 lists: per event of 4-event batches, Postgres
# 0.110 -> 0.102 ms and the persister's client 0.029 -> 0.016 ms (alternated rounds).
TELEMETRY_ROW = "telemetry_row"
_UNNEST = f"unnest($1::{TELEMETRY_ROW}[]) WITH ORDINALITY AS t({_COLS}, ord)"


def _metric_aggregates(col: str, prefix: str) -> str:
    ok = f"status = 'ok' AND {col} IS NOT NULL"
    return (
        f"count({col}) FILTER (WHERE {ok}), min({col}) FILTER (WHERE {ok}), max({col}) FILTER (WHERE {ok}), "
        f"coalesce(sum({col}) FILTER (WHERE {ok}), 0), "
        f"coalesce(sum(ln(greatest({col}, 1e-9))) FILTER (WHERE {ok}), 0), "
        f"coalesce(sum(ln(greatest({col}, 1e-9)) ^ 2) FILTER (WHERE {ok}), 0)"
    )


def _metric_merge(prefix: str) -> str:
    return (
        f"{prefix}_n = m.{prefix}_n + EXCLUDED.{prefix}_n, "
        f"{prefix}_min = LEAST(m.{prefix}_min, EXCLUDED.{prefix}_min), "
        f"{prefix}_max = GREATEST(m.{prefix}_max, EXCLUDED.{prefix}_max), "
        f"{prefix}_sum = m.{prefix}_sum + EXCLUDED.{prefix}_sum, "
        f"{prefix}_logsum = m.{prefix}_logsum + EXCLUDED.{prefix}_logsum, "
        f"{prefix}_logsq = m.{prefix}_logsq + EXCLUDED.{prefix}_logsq"
    )


# A model's row takes the batch's latest state, never an older batch's (the same on every path).
# It is its probes' state: an application's traffic (source 'traffic') writes only the row of a
# model never probed, and the model's first probe replaces it (first_seen included), so a
# traffic host is never shown as a probed model's target nor matched by a maintenance window.
# A batch offers its latest probe of each model, or its latest traffic where it has no probe.
_MODEL_UPSERT = """ON CONFLICT (provider, model) DO UPDATE SET
    first_seen = CASE WHEN m.source = EXCLUDED.source THEN LEAST(m.first_seen, EXCLUDED.first_seen)
                      ELSE EXCLUDED.first_seen END,
    last_seen = EXCLUDED.last_seen, target = EXCLUDED.target, host = EXCLUDED.host,
    last_status = EXCLUDED.last_status, cpu_percent = EXCLUDED.cpu_percent,
    memory_percent = EXCLUDED.memory_percent, gpu_percent = EXCLUDED.gpu_percent,
    gpu_memory_percent = EXCLUDED.gpu_memory_percent, source = EXCLUDED.source, updated_at = now()
WHERE m.source = EXCLUDED.source AND EXCLUDED.last_seen >= m.last_seen
   OR m.source = 'traffic' AND EXCLUDED.source = 'probe'"""

ROLLUP_COLUMNS: tuple[str, ...] = tuple(
    f"{p}_{c}" for p in ("latency", "ttft", "tps") for c in ("n", "min", "max", "sum", "logsum", "logsq")
)
"""The metric columns of a rollup row (minute and series hour alike), after its n and n_ok."""
_ROLLUP_COLS = ", ".join(ROLLUP_COLUMNS)


# A series' (and series target's) first and last seen: the first exact, the last to the minute
# (SEEN_GRAIN: the minute of its latest event; a reader that needs the time finds it among that
# minute's telemetry, series_seen.target_last_seen). An event within the minute its row holds
# changes nothing, and the upsert's WHERE leaves the row as it is: at one probe every 2 s a
# series' row is rewritten once a minute, not 30 times (each rewrite a HOT update, its tuple and
# later a prune in the WAL; a tuple lock record remains). The row is the same whatever the
# batches (the minute of the latest event), so every write path still leaves the same rows.
# A NOT EXISTS read before the insert (no lock at all) made Postgres plan the statement at
# every execution (custom plans): more CPU than the lock records it saved.
def _seen_upsert(table: str, keys: tuple[str, ...], rows: str) -> str:
    """Upsert ``rows`` (``keys``, first seen, latest event) into ``table`` in key order, last seen
    to SEEN_GRAIN; a row whose span holds theirs is left unwritten."""
    cols = ", ".join(keys)
    return f"""INSERT INTO {table} AS s ({cols}, first_seen, last_seen)
    SELECT {cols}, first_seen, date_trunc('{SEEN_GRAIN}', latest)
    FROM ({rows}) AS r({cols}, first_seen, latest)
    ORDER BY {_key_order(*(f"r.{k}" for k in keys))}
    ON CONFLICT ({cols}) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
    WHERE EXCLUDED.first_seen < s.first_seen OR EXCLUDED.last_seen > s.last_seen"""


_SERIES = ("provider", "model", "prompt_id")
_TARGETS = (*_SERIES, "target")

# A minute row's write, whatever the path: the batch's aggregates added, and ``folded`` false, so
# that the background fold recomputes its hour (persister/hour_fold.py, migration 0019). For the
# current minute it was false already: the same value, so the update stays HOT (the partial index
# on unfolded minutes reads that column).
_MINUTE_MERGE = f"""ON CONFLICT (provider, model, prompt_id, target, minute) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}, folded = false"""

_SRC_SERIES = "SELECT provider, model, prompt_id, min(ts), max(ts) FROM src GROUP BY 1, 2, 3"
_SRC_TARGETS = "SELECT provider, model, prompt_id, target, min(ts), max(ts) FROM src GROUP BY 1, 2, 3, 4"

# A small batch's one statement, one round trip: insert the new rows and fold exactly those rows
# into the minute rollups (their hours are folded later: MARK_FOLDED); widen each series' (and
# series target's) first/last seen; set each model's latest state. Every upsert takes its rows in
# key order (code point order, as UPSERT_AGGREGATES), so concurrent persisters lock in one order.
STORE_TELEMETRY_ARRAYS = f"""
WITH src AS MATERIALIZED (
    SELECT {_COLS}, ord FROM {_UNNEST}
), ins AS (
    INSERT INTO telemetry ({_COLS})
    SELECT DISTINCT ON ({_ID_ORDER}) {_COLS} FROM src ORDER BY {_ID_ORDER}
    ON CONFLICT (id) DO NOTHING
    RETURNING provider, model, prompt_id, target, ts, status, latency_ms, ttft_ms, tokens_per_s
), roll AS (
    INSERT INTO telemetry_minute AS m (provider, model, prompt_id, target, minute, n, n_ok, {_ROLLUP_COLS})
    SELECT provider, model, prompt_id, target, date_trunc('minute', ts), count(*),
           count(*) FILTER (WHERE status = 'ok'),
           {_metric_aggregates("latency_ms", "latency")},
           {_metric_aggregates("ttft_ms", "ttft")},
           {_metric_aggregates("tokens_per_s", "tps")}
    FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY {_key_order("provider", "model", "prompt_id", "target", "5")}
    {_MINUTE_MERGE}
), ser AS (
    {_seen_upsert("series", _SERIES, _SRC_SERIES)}
), tgt AS (
    {_seen_upsert("series_targets", _TARGETS, _SRC_TARGETS)}
), mdl AS (
    INSERT INTO models AS m (provider, model, first_seen, last_seen, target, host, last_status,
                             cpu_percent, memory_percent, gpu_percent, gpu_memory_percent, source)
    SELECT l.provider, l.model, f.first_seen, l.ts, l.target, l.host, l.status,
           l.cpu_percent, l.memory_percent, l.gpu_percent, l.gpu_memory_percent, l.source
    FROM (SELECT DISTINCT ON (provider, model) * FROM src
          ORDER BY provider, model, source = 'traffic', ts DESC, ord DESC) AS l
    JOIN (SELECT provider, model, source, min(ts) AS first_seen FROM src GROUP BY 1, 2, 3) AS f
      ON f.provider = l.provider AND f.model = l.model AND f.source = l.source
    ORDER BY {_key_order("l.provider", "l.model")}
    {_MODEL_UPSERT}
)
SELECT count(*) FROM ins
"""

# The same statement for a batch none of whose events is stored yet (nearly every batch): a plain
# INSERT, no ON CONFLICT arbitration on telemetry's id. Speculative insertion probes the primary
# key before each row and writes a confirmation WAL record after it; a plain INSERT checks the
# key once, as it adds the index entry. Postgres's CPU per event of 4-event batches fell by about
# an eighth (0.125 -> 0.110 ms, the two statements alternated on one connection). A batch holding
# an event stored already (a redelivery) fails on ``telemetry_pkey`` as a whole, nothing of it
# kept, and is stored again by STORE_TELEMETRY_ARRAYS (:func:`.writes.store_telemetry`).
_TELEMETRY_CONFLICT = "ON CONFLICT (id) DO NOTHING\n    RETURNING provider"
if STORE_TELEMETRY_ARRAYS.count(_TELEMETRY_CONFLICT) != 1:
    raise AssertionError("STORE_TELEMETRY_ARRAYS's insert changed: update STORE_NEW_TELEMETRY_ARRAYS")
STORE_NEW_TELEMETRY_ARRAYS = STORE_TELEMETRY_ARRAYS.replace(_TELEMETRY_CONFLICT, "RETURNING provider")
TELEMETRY_KEY = "telemetry_pkey"
"""The constraint a redelivered event's row violates (migrations/0001_initial.sql)."""

# One event, the batch of a trickle (at 100 probe events/s nearly every batch): its values as
# plain parameters, not one array per column unnested (a function scan, a sort and a hash
# aggregate per CTE, for one row), and its rollup row computed by the persister
# (:func:`one_rollup`), folded into the minute and series-hour rollups only when the insert
# stored the event (a redelivery adds nothing). Postgres's CPU per one-event batch went from
# about 1.0 to 0.6 ms (``bench/event_cost.py``). Same rows as STORE_TELEMETRY_ARRAYS: a test
# writes the same events both ways and compares every rollup, series and model row.
_N = len(TELEMETRY_COLUMNS)
_P = {c: f"${i}::{TELEMETRY_TYPES[c]}" for i, c in enumerate(TELEMETRY_COLUMNS, 1)}
_ONE_ROLLUP = ", ".join(
    f"${i}::{'integer' if (i - _N - 2) % 6 == 0 else 'double precision'}" for i in range(_N + 2, _N + 20)
)
_ONE_SERIES = f"VALUES ({_P['provider']}, {_P['model']}, {_P['prompt_id']}, {_P['ts']}, {_P['ts']})"
_ONE_TARGET = (
    f"VALUES ({_P['provider']}, {_P['model']}, {_P['prompt_id']}, {_P['target']}, {_P['ts']}, {_P['ts']})"
)
STORE_ONE_TELEMETRY = f"""
WITH ins AS (
    INSERT INTO telemetry ({_COLS}) VALUES ({", ".join(_P.values())})
    ON CONFLICT (id) DO NOTHING
    RETURNING ts
), roll AS (
    INSERT INTO telemetry_minute AS m (provider, model, prompt_id, target, minute, n, n_ok, {_ROLLUP_COLS})
    SELECT {_P["provider"]}, {_P["model"]}, {_P["prompt_id"]}, {_P["target"]}, date_trunc('minute', ts), 1,
           ${_N + 1}::integer, {_ONE_ROLLUP}
    FROM ins
    {_MINUTE_MERGE}
), ser AS (
    {_seen_upsert("series", _SERIES, _ONE_SERIES)}
), tgt AS (
    {_seen_upsert("series_targets", _TARGETS, _ONE_TARGET)}
), mdl AS (
    INSERT INTO models AS m (provider, model, first_seen, last_seen, target, host, last_status,
                             cpu_percent, memory_percent, gpu_percent, gpu_memory_percent, source)
    VALUES ({_P["provider"]}, {_P["model"]}, {_P["ts"]}, {_P["ts"]}, {_P["target"]}, {_P["host"]},
            {_P["status"]}, {_P["cpu_percent"]}, {_P["memory_percent"]}, {_P["gpu_percent"]},
            {_P["gpu_memory_percent"]}, {_P["source"]})
    {_MODEL_UPSERT}
)
SELECT count(*) FROM ins
"""


_ROLLUP_ARRAYS = ", ".join(
    f"${i}::{t}[]"
    for i, t in enumerate(
        ["text"] * 4 + ["timestamptz", "integer", "integer"] + ["integer", *["double precision"] * 5] * 3, 1
    )
)
ROLLUP_PARAMS = 25
"""UPSERT_AGGREGATES's parameters that are minute rollups; the series, targets and models follow."""
_SERIES_ARRAYS = "$26::text[], $27::text[], $28::text[], $29::timestamptz[], $30::timestamptz[]"
_TARGET_ARRAYS = "$31::text[], $32::text[], $33::text[], $34::text[], $35::timestamptz[], $36::timestamptz[]"
_MODEL_ARRAYS = (
    "$37::text[], $38::text[], $39::timestamptz[], $40::timestamptz[], $41::text[], $42::text[], "
    "$43::text[], $44::real[], $45::real[], $46::real[], $47::real[], $48::text[]"
)

# After a COPY that stored every event of the batch (none was there yet): the rollups, series,
# series targets and models of the batch, aggregated by :func:`batch_aggregates`, in one
# statement (also after the temporary table's insert, for the rows it inserted). Rows go in key
# order, as in STORE_TELEMETRY_ARRAYS.
UPSERT_AGGREGATES = f"""
WITH mins AS MATERIALIZED (
    SELECT * FROM unnest({_ROLLUP_ARRAYS})
        AS u(provider, model, prompt_id, target, minute, n, n_ok, {_ROLLUP_COLS})
), roll AS (
    INSERT INTO telemetry_minute AS m (provider, model, prompt_id, target, minute, n, n_ok, {_ROLLUP_COLS})
    SELECT * FROM mins
    {_MINUTE_MERGE}
), ser AS (
    {_seen_upsert("series", _SERIES, f"SELECT * FROM unnest({_SERIES_ARRAYS})")}
), tgt AS (
    {_seen_upsert("series_targets", _TARGETS, f"SELECT * FROM unnest({_TARGET_ARRAYS})")}
)
INSERT INTO models AS m (provider, model, first_seen, last_seen, target, host, last_status,
                         cpu_percent, memory_percent, gpu_percent, gpu_memory_percent, source)
SELECT * FROM unnest({_MODEL_ARRAYS})
{_MODEL_UPSERT}
"""

# The hourly rollups of each series, folded from its minute rollups in the background
# (persister/hour_fold.py; migration 0019), not upserted with each event: the statements above
# mark each minute row they write unfolded. FOLD_DUE finds up to $1 series-hours that are over
# (by the database's clock; before $2 where given) and hold an unfolded minute, and whether their
# minutes were pruned (migration 0020). For the others, MARK_FOLDED marks those minutes folded
# and returns the series-hours it marked; in the same transaction RECOMPUTE_HOURS then sets each
# of those hours to the sums of all its minutes, read by a statement that starts after the marks
# are taken. A write to one of those minutes either committed before the marks (they waited for
# its row lock), so the sums hold it, or comes after them and marks its minute unfolded again
# for the next fold; an hour recomputed twice is the same hour. Every minute of such an hour is
# locked, not only its unfolded ones: a persister still on the code before 0019 (a rolling
# upgrade) adds a late event to a folded minute, leaving it folded, and to the hour row in the
# same transaction; were that minute not locked, the recompute could take its sums before that
# write commits and then replace the hour row after it, losing the event for good. The marks
# take rows in key order, as the writes do (a late event's write may wait for a fold, or the
# other way round, never both).
#
# An hour whose minutes were pruned (``minutes_pruned``) is never recomputed: the sums of the
# minutes left would replace, and shrink, it. Its minute rows are late events' only, never
# folded: ADD_TO_PRUNED_HOURS deletes them and adds exactly the rows it deleted to the hour row.
FOLD_DUE = """
SELECT d.provider, d.model, d.prompt_id, d.target, d.hour, coalesce(h.minutes_pruned, false) AS pruned
FROM (
    SELECT DISTINCT provider, model, prompt_id, target, date_trunc('hour', minute) AS hour
    FROM telemetry_minute
    WHERE NOT folded AND minute < coalesce($2, date_trunc('hour', now()))
    ORDER BY 1, 2, 3, 4, 5
    LIMIT $1
) AS d
LEFT JOIN telemetry_series_hour h
  ON h.provider = d.provider AND h.model = d.model AND h.hour = d.hour
 AND h.prompt_id = d.prompt_id AND h.target = d.target
ORDER BY 1, 2, 3, 4, 5
"""

_DUE_KEYS = (
    "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])"
    " AS due(provider, model, prompt_id, target, hour)"
)
_DUE_MINUTES = f"""SELECT t.provider, t.model, t.prompt_id, t.target, t.minute
    FROM {_DUE_KEYS} JOIN telemetry_minute t
      ON t.provider = due.provider AND t.model = due.model AND t.prompt_id = due.prompt_id
     AND t.target = due.target AND t.minute >= due.hour AND t.minute < due.hour + interval '1 hour'
    ORDER BY {_key_order("t.provider", "t.model", "t.prompt_id", "t.target", "5")}
    FOR UPDATE OF t"""
_IN_DUE = """m.provider = due.provider AND m.model = due.model AND m.prompt_id = due.prompt_id
      AND m.target = due.target AND m.minute >= due.hour AND m.minute < due.hour + interval '1 hour'"""
# Every row of the statement locked first, in key order (an init plan, run once before the
# update or delete reads a row), then updated or deleted by its key: as a write that committed
# since the statement began left it. (A join with the locked rows, estimated at one row, made
# Postgres loop over every unfolded minute for each locked one: a fold of 300 series-hours took a
# minute instead of 0.2 s; a join by ctid missed a row a write had updated meanwhile.)
_LOCKED_FIRST = "(SELECT count(*) FROM locked) >= 0"

MARK_FOLDED = f"""
WITH locked AS (
    {_DUE_MINUTES}
), marked AS (
    UPDATE telemetry_minute AS m SET folded = true
    FROM {_DUE_KEYS}
    WHERE {_IN_DUE} AND NOT m.folded AND {_LOCKED_FIRST}
    RETURNING m.provider, m.model, m.prompt_id, m.target, date_trunc('hour', m.minute) AS hour
)
SELECT DISTINCT provider, model, prompt_id, target, hour FROM marked
"""

_HOUR_SUMS = ", ".join(
    f"sum(t.{p}_n), min(t.{p}_min), max(t.{p}_max), sum(t.{p}_sum), sum(t.{p}_logsum), sum(t.{p}_logsq)"
    for p in ("latency", "ttft", "tps")
)
_HOUR_COLS = ("n", "n_ok", *ROLLUP_COLUMNS)

RECOMPUTE_HOURS = f"""
INSERT INTO telemetry_series_hour AS h (provider, model, hour, prompt_id, target, n, n_ok, {_ROLLUP_COLS})
SELECT d.provider, d.model, d.hour, d.prompt_id, d.target, sum(t.n), sum(t.n_ok), {_HOUR_SUMS}
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
     AS d(provider, model, prompt_id, target, hour)
JOIN telemetry_minute t
  ON t.provider = d.provider AND t.model = d.model AND t.prompt_id = d.prompt_id
 AND t.target = d.target AND t.minute >= d.hour AND t.minute < d.hour + interval '1 hour'
GROUP BY d.provider, d.model, d.hour, d.prompt_id, d.target
ORDER BY {_key_order("d.provider", "d.model", "3", "d.prompt_id", "d.target")}
ON CONFLICT (provider, model, hour, prompt_id, target) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _HOUR_COLS)}
"""

# A chunk holding both pruned and whole series-hours: every minute of them locked first, in key
# order, as a write locks its minutes (MARK_FOLDED and then ADD_TO_PRUNED_HOURS each lock in key
# order, but the second's minutes may come before the first's: a fold holding a whole hour's
# minute and waiting for a pruned hour's that a write held, waiting for the other, deadlocked).
LOCK_DUE = f"""
WITH locked AS (
    {_DUE_MINUTES}
)
SELECT count(*) FROM locked
"""

# The rows it deletes are the rows it adds (RETURNING): a row a write inserts meanwhile is left
# for the next fold, a row a write updates meanwhile is deleted as that write left it.
ADD_TO_PRUNED_HOURS = f"""
WITH locked AS (
    {_DUE_MINUTES}
), gone AS (
    DELETE FROM telemetry_minute AS m USING {_DUE_KEYS} WHERE {_IN_DUE} AND {_LOCKED_FIRST}
    RETURNING m.*
)
INSERT INTO telemetry_series_hour AS m (provider, model, hour, prompt_id, target, n, n_ok, {_ROLLUP_COLS})
SELECT t.provider, t.model, date_trunc('hour', t.minute), t.prompt_id, t.target, sum(t.n), sum(t.n_ok),
       {_HOUR_SUMS}
FROM gone t
GROUP BY 1, 2, 3, 4, 5
ORDER BY {_key_order("1", "2", "3", "4", "5")}
ON CONFLICT (provider, model, hour, prompt_id, target) DO UPDATE SET
    n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
    {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
"""

# Retention of the minute rollups shorter than the hours' (persister/retention.py): one hour's
# minutes ($1), every series' at once, under the fold's lock taken exclusively (no fold between
# the marks read here and the deletes). A series-hour goes only whole and only once every minute
# of it is folded (its hour row holds them all), and its hour row is marked ``minutes_pruned`` in
# the same statement; one with an unfolded minute stays for the next run, after the next fold. A
# minute a write inserts meanwhile is not seen, nor deleted: a late event's, never folded, which
# the fold then adds to the hour.
PRUNE_MINUTE_HOUR = f"""
WITH locked AS (
    SELECT provider, model, prompt_id, target, minute, folded FROM telemetry_minute
    WHERE minute >= $1 AND minute < $1 + interval '1 hour'
    ORDER BY {_key_order("provider", "model", "prompt_id", "target", "5")}
    FOR UPDATE
), whole AS MATERIALIZED (
    SELECT provider, model, prompt_id, target FROM locked GROUP BY 1, 2, 3, 4 HAVING bool_and(folded)
), gone AS (
    DELETE FROM telemetry_minute AS m USING whole w
    WHERE m.provider = w.provider AND m.model = w.model AND m.prompt_id = w.prompt_id
      AND m.target = w.target AND m.minute >= $1 AND m.minute < $1 + interval '1 hour'
      AND {_LOCKED_FIRST}
    RETURNING 1
), pruned AS (
    UPDATE telemetry_series_hour AS h SET minutes_pruned = true
    FROM whole w
    WHERE h.provider = w.provider AND h.model = w.model AND h.hour = $1 AND h.prompt_id = w.prompt_id
      AND h.target = w.target AND NOT h.minutes_pruned
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS deleted, (SELECT count(*) FROM pruned) AS hours
"""


INSERT_VIOLATION = """
INSERT INTO violations (
    id, episode_id, ts, provider, model, target, host, prompt_id, metric, chart, chart_key, rule,
    rule_name, severity, value, statistic, deviation_sigma, transform, center, sigma, ucl, lcl,
    zone_a_upper, zone_a_lower, zone_b_upper, zone_b_lower, baseline_id, baseline_n, point_ids, event,
    cleared_at, cleared_id)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
       $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, c.ts, c.id
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT ts, id FROM violation_clears WHERE episode_id = $2 ORDER BY ts LIMIT 1
) AS c ON true
ON CONFLICT (id) DO NOTHING
"""

INSERT_CLEAR = """
INSERT INTO violation_clears (id, episode_id, ts, event) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO NOTHING
"""

APPLY_CLEAR = """
UPDATE violations SET cleared_at = $2, cleared_id = $3
WHERE id = $1 AND (cleared_at IS NULL OR cleared_at > $2)
"""

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (id, ts, source, subject, reason, payload, payload_encoding, stream_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (id) DO NOTHING
"""
