"""The persister: telemetry, violations, dead letters and incidents from JetStream into Postgres.

Each stream has a durable consumer; a batch is written in one transaction and acked only after
COMMIT (the consumer acks when the handler returns). Writes are idempotent by event id, so a
redelivered batch stores nothing twice, and the per-minute rollups count each probe once because
they aggregate only the rows the insert actually added. A large batch of telemetry none of which
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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import operator
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy
from nats.js import JetStreamContext

from llmscope.api.baseline_history import BaselineHistory
from llmscope.api.db import open_pool
from llmscope.api.incidents_store import store_incidents
from llmscope.api.metrics import ApiMetrics
from llmscope.api.settings import ApiSettings
from llmscope.bus.consumer import ConsumerOptions, Delivery, DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.layout import prepare
from llmscope.bus.metrics import sample_consumers
from llmscope.bus.publisher import Publisher
from llmscope.config import eventloop
from llmscope.config.logs import get_logger, setup_logging
from llmscope.config.startup import Stopped, Unusable, postgres_unavailable, stop_on_signals
from llmscope.proto import codec, subjects
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.proto.incident import IncidentEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent

log = get_logger("llmscope.api.persister")

SOURCE = subjects.PERSISTER
RETENTION_TIMEOUT_S = 900.0
FILL_WAIT_S = 0.003
PERSIST_BATCH = 2000
"""Events per transaction with a backlog. A batch's rollup, series, series target and model upserts
are about one row per model however many events it holds, and a COMMIT one fsync: going from 500
to 2000 cut Postgres's CPU per drained event from 15-16 to 8-10 us (``bench/ingest_bench.py``).
A trickle is not held back by it: a pull takes what is there (``ConsumerOptions.fill_wait``)."""
LAG_SAMPLE_S = 5.0
"""How often each consumer's lag is read from the server (one request per consumer)."""
QUIET_EXPIRES_S = 5.0
"""The open pull request's expiry of the persister's violation, dead-letter and incident
consumers (telemetry's: ``ConsumerOptions.fetch_timeout``, 1 s). Those streams are quiet most of
the time, and each expiry is a request and a status through nats-server and a wake-up here:
eight messages a second for the three and telemetry, idle, with 1 s. A message still comes at
once on the open request; a request lost with the connection is given up after this (and 0.5 s),
so those three resume at most that long after NATS comes back."""
TELEMETRY_CONCURRENT = 2
"""Full telemetry batches stored at once, each on its own connection (``ConsumerOptions.concurrent``):
one batch's rows are COPY'd while the other's aggregates are upserted and its COMMIT waits on
the disk; the aggregates and COMMITs themselves go one after the other (``store_telemetry``)."""
KEEP_CONNECTION_S = 5.0
"""How long the persister keeps a pool connection after a batch for the next one. A pool's
release runs a reset (``RESET ALL; CLOSE ALL; UNLISTEN *``...: a round trip and a transaction
of its own), which at a trickle, a batch or two per event, was a third of Postgres's work."""
GC_YOUNGEST_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""

Conn = asyncpg.Connection | PoolConnectionProxy
E = TypeVar("E")

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

# Postgres types of TELEMETRY_COLUMNS (migrations/0001_initial.sql), for the array parameters of
# a small batch's one-statement insert.
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

COPY_MIN_ROWS = 128
"""A batch this large goes through COPY into a temporary table; a smaller one is sent as one array
parameter per column (a statement of its own: one round trip, ~1.5 ms for one event)."""

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

_UNNEST = "unnest({}) WITH ORDINALITY AS t({}, ord)".format(
    ", ".join(f"${i}::{TELEMETRY_TYPES[c]}[]" for i, c in enumerate(TELEMETRY_COLUMNS, 1)), _COLS
)


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
_MODEL_UPSERT = """ON CONFLICT (provider, model) DO UPDATE SET
    first_seen = LEAST(m.first_seen, EXCLUDED.first_seen),
    last_seen = EXCLUDED.last_seen, target = EXCLUDED.target, host = EXCLUDED.host,
    last_status = EXCLUDED.last_status, cpu_percent = EXCLUDED.cpu_percent,
    memory_percent = EXCLUDED.memory_percent, gpu_percent = EXCLUDED.gpu_percent,
    gpu_memory_percent = EXCLUDED.gpu_memory_percent, updated_at = now()
WHERE EXCLUDED.last_seen >= m.last_seen"""

_ROLLUP_COLS = ", ".join(
    f"{p}_n, {p}_min, {p}_max, {p}_sum, {p}_logsum, {p}_logsq" for p in ("latency", "ttft", "tps")
)

# The hourly rollups of each series (its prompt on one target), in their key's order (the hour
# before the prompt and target, migration 0011): what the comparison of one model's prompts or
# targets reads over 7 or 30 days.
_SERIES_HOUR_MERGE = f"""ON CONFLICT (provider, model, hour, prompt_id, target) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}"""

# A small batch's one statement, one round trip: insert the new rows and fold exactly those rows
# into the minute and hour rollups; widen each series' (and series target's) first/last seen; set
# each model's latest state. Every upsert takes its rows in key order (code point order, as
# UPSERT_AGGREGATES), so concurrent persisters lock in one order.
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
    ON CONFLICT (provider, model, prompt_id, target, minute) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
), roll_hour AS (
    INSERT INTO telemetry_hour AS m (provider, model, hour, n, n_ok, {_ROLLUP_COLS})
    SELECT provider, model, date_trunc('hour', ts), count(*),
           count(*) FILTER (WHERE status = 'ok'),
           {_metric_aggregates("latency_ms", "latency")},
           {_metric_aggregates("ttft_ms", "ttft")},
           {_metric_aggregates("tokens_per_s", "tps")}
    FROM ins GROUP BY 1, 2, 3 ORDER BY {_key_order("provider", "model", "3")}
    ON CONFLICT (provider, model, hour) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
), roll_series_hour AS (
    INSERT INTO telemetry_series_hour AS m (provider, model, hour, prompt_id, target, n, n_ok, {_ROLLUP_COLS})
    SELECT provider, model, date_trunc('hour', ts), prompt_id, target, count(*),
           count(*) FILTER (WHERE status = 'ok'),
           {_metric_aggregates("latency_ms", "latency")},
           {_metric_aggregates("ttft_ms", "ttft")},
           {_metric_aggregates("tokens_per_s", "tps")}
    FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY {_key_order("provider", "model", "3", "prompt_id", "target")}
    {_SERIES_HOUR_MERGE}
), ser AS (
    INSERT INTO series AS s (provider, model, prompt_id, first_seen, last_seen)
    SELECT provider, model, prompt_id, min(ts), max(ts) FROM src
    GROUP BY 1, 2, 3 ORDER BY {_key_order("provider", "model", "prompt_id")}
    ON CONFLICT (provider, model, prompt_id) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
), tgt AS (
    INSERT INTO series_targets AS s (provider, model, prompt_id, target, first_seen, last_seen)
    SELECT provider, model, prompt_id, target, min(ts), max(ts) FROM src
    GROUP BY 1, 2, 3, 4 ORDER BY {_key_order("provider", "model", "prompt_id", "target")}
    ON CONFLICT (provider, model, prompt_id, target) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
), mdl AS (
    INSERT INTO models AS m (provider, model, first_seen, last_seen, target, host, last_status,
                             cpu_percent, memory_percent, gpu_percent, gpu_memory_percent)
    SELECT l.provider, l.model, f.first_seen, l.ts, l.target, l.host, l.status,
           l.cpu_percent, l.memory_percent, l.gpu_percent, l.gpu_memory_percent
    FROM (SELECT DISTINCT ON (provider, model) * FROM src ORDER BY provider, model, ts DESC, ord DESC) AS l
    JOIN (SELECT provider, model, min(ts) AS first_seen FROM src GROUP BY 1, 2) AS f
      ON f.provider = l.provider AND f.model = l.model
    ORDER BY {_key_order("l.provider", "l.model")}
    {_MODEL_UPSERT}
)
SELECT count(*) FROM ins
"""

# One event, the batch of a trickle (at 100 probe events/s nearly every batch): its values as
# plain parameters, not one array per column unnested (a function scan, a sort and a hash
# aggregate per CTE, for one row), and its rollup row computed by the persister
# (:func:`_one_rollup`), folded into the minute and both hour rollups only when the insert
# stored the event (a redelivery adds nothing). Postgres's CPU per one-event batch went from
# about 1.0 to 0.6 ms (``bench/event_cost.py``). Same rows as STORE_TELEMETRY_ARRAYS: a test
# writes the same events both ways and compares every rollup, series and model row.
_N = len(TELEMETRY_COLUMNS)
_P = {c: f"${i}::{TELEMETRY_TYPES[c]}" for i, c in enumerate(TELEMETRY_COLUMNS, 1)}
_ONE_ROLLUP = ", ".join(
    f"${i}::{'integer' if (i - _N - 2) % 6 == 0 else 'double precision'}" for i in range(_N + 2, _N + 20)
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
    ON CONFLICT (provider, model, prompt_id, target, minute) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
), roll_hour AS (
    INSERT INTO telemetry_hour AS m (provider, model, hour, n, n_ok, {_ROLLUP_COLS})
    SELECT {_P["provider"]}, {_P["model"]}, date_trunc('hour', ts), 1, ${_N + 1}::integer, {_ONE_ROLLUP}
    FROM ins
    ON CONFLICT (provider, model, hour) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
), roll_series_hour AS (
    INSERT INTO telemetry_series_hour AS m (provider, model, hour, prompt_id, target, n, n_ok, {_ROLLUP_COLS})
    SELECT {_P["provider"]}, {_P["model"]}, date_trunc('hour', ts), {_P["prompt_id"]}, {_P["target"]}, 1,
           ${_N + 1}::integer, {_ONE_ROLLUP}
    FROM ins
    {_SERIES_HOUR_MERGE}
), ser AS (
    INSERT INTO series AS s (provider, model, prompt_id, first_seen, last_seen)
    VALUES ({_P["provider"]}, {_P["model"]}, {_P["prompt_id"]}, {_P["ts"]}, {_P["ts"]})
    ON CONFLICT (provider, model, prompt_id) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
), tgt AS (
    INSERT INTO series_targets AS s (provider, model, prompt_id, target, first_seen, last_seen)
    VALUES ({_P["provider"]}, {_P["model"]}, {_P["prompt_id"]}, {_P["target"]}, {_P["ts"]}, {_P["ts"]})
    ON CONFLICT (provider, model, prompt_id, target) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
), mdl AS (
    INSERT INTO models AS m (provider, model, first_seen, last_seen, target, host, last_status,
                             cpu_percent, memory_percent, gpu_percent, gpu_memory_percent)
    VALUES ({_P["provider"]}, {_P["model"]}, {_P["ts"]}, {_P["ts"]}, {_P["target"]}, {_P["host"]},
            {_P["status"]}, {_P["cpu_percent"]}, {_P["memory_percent"]}, {_P["gpu_percent"]},
            {_P["gpu_memory_percent"]})
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
_ROLLUP_PARAMS = 25
"""UPSERT_AGGREGATES's parameters that are minute rollups; the series, targets and models follow."""
_SERIES_ARRAYS = "$26::text[], $27::text[], $28::text[], $29::timestamptz[], $30::timestamptz[]"
_TARGET_ARRAYS = "$31::text[], $32::text[], $33::text[], $34::text[], $35::timestamptz[], $36::timestamptz[]"
_MODEL_ARRAYS = (
    "$37::text[], $38::text[], $39::timestamptz[], $40::timestamptz[], $41::text[], $42::text[], "
    "$43::text[], $44::real[], $45::real[], $46::real[], $47::real[]"
)

# Minute rollups folded into hours: by model (every prompt and target pooled) and by series.
_HOUR_FOLD = ", ".join(
    f"sum({p}_n), min({p}_min), max({p}_max), sum({p}_sum), sum({p}_logsum), sum({p}_logsq)"
    for p in ("latency", "ttft", "tps")
)

# After a COPY that stored every event of the batch (none was there yet): the rollups, series,
# series targets and models of the batch, aggregated by :func:`_batch_aggregates`, in one
# statement (also after the temporary table's insert, for the rows it inserted). Rows go in key
# order, as in STORE_TELEMETRY_ARRAYS.
UPSERT_AGGREGATES = f"""
WITH mins AS MATERIALIZED (
    SELECT * FROM unnest({_ROLLUP_ARRAYS})
        AS u(provider, model, prompt_id, target, minute, n, n_ok, {_ROLLUP_COLS})
), roll AS (
    INSERT INTO telemetry_minute AS m (provider, model, prompt_id, target, minute, n, n_ok, {_ROLLUP_COLS})
    SELECT * FROM mins
    ON CONFLICT (provider, model, prompt_id, target, minute) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
), roll_hour AS (
    INSERT INTO telemetry_hour AS m (provider, model, hour, n, n_ok, {_ROLLUP_COLS})
    SELECT provider, model, date_trunc('hour', minute), sum(n), sum(n_ok), {_HOUR_FOLD}
    FROM mins GROUP BY 1, 2, 3 ORDER BY {_key_order("provider", "model", "3")}
    ON CONFLICT (provider, model, hour) DO UPDATE SET
        n = m.n + EXCLUDED.n, n_ok = m.n_ok + EXCLUDED.n_ok,
        {_metric_merge("latency")}, {_metric_merge("ttft")}, {_metric_merge("tps")}
), roll_series_hour AS (
    INSERT INTO telemetry_series_hour AS m (provider, model, hour, prompt_id, target, n, n_ok, {_ROLLUP_COLS})
    SELECT provider, model, date_trunc('hour', minute), prompt_id, target, sum(n), sum(n_ok), {_HOUR_FOLD}
    FROM mins GROUP BY 1, 2, 3, 4, 5 ORDER BY {_key_order("provider", "model", "3", "prompt_id", "target")}
    {_SERIES_HOUR_MERGE}
), ser AS (
    INSERT INTO series AS s (provider, model, prompt_id, first_seen, last_seen)
    SELECT * FROM unnest({_SERIES_ARRAYS})
    ON CONFLICT (provider, model, prompt_id) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
), tgt AS (
    INSERT INTO series_targets AS s (provider, model, prompt_id, target, first_seen, last_seen)
    SELECT * FROM unnest({_TARGET_ARRAYS})
    ON CONFLICT (provider, model, prompt_id, target) DO UPDATE SET
        first_seen = LEAST(s.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
)
INSERT INTO models AS m (provider, model, first_seen, last_seen, target, host, last_status,
                         cpu_percent, memory_percent, gpu_percent, gpu_memory_percent)
SELECT * FROM unnest({_MODEL_ARRAYS})
{_MODEL_UPSERT}
"""

_ROLLUP_METRICS = tuple(operator.attrgetter(c) for c in ("latency_ms", "ttft_ms", "tokens_per_s"))
_ts = operator.attrgetter("ts")
_MINUTE = timedelta(minutes=1)
_NEVER = datetime(1, 1, 1, tzinfo=UTC)
_LOG_FLOOR = math.log(1e-9)


def _metric_rollup(values: list[float]) -> list[Any]:
    """n, min, max, sum, sum of logs (floored at 1e-9) and of their squares, as STORE_TELEMETRY_ARRAYS's
    aggregates."""
    if not values:
        return [0, None, None, 0.0, 0.0, 0.0]
    if min(values) > 1e-9:
        logs = list(map(math.log, values))
    else:
        logs = [math.log(v) if v > 1e-9 else _LOG_FLOOR for v in values]
    return [len(values), min(values), max(values), sum(values), sum(logs), sum([x * x for x in logs])]


def _one_rollup(ev: TelemetryEvent) -> list[Any]:
    """STORE_ONE_TELEMETRY's parameters after the event's columns: its rollup row's ``n_ok`` and
    metric aggregates (as :func:`_metric_rollup` of a one-event group)."""
    if ev.status != "ok":
        return [0, *_EMPTY_ROLLUP * 3]
    out: list[Any] = [1]
    for metric in _ROLLUP_METRICS:
        v = metric(ev)
        if v is None:
            out += _EMPTY_ROLLUP
        else:
            log_v = math.log(v) if v > 1e-9 else _LOG_FLOOR
            out += (1, v, v, v, log_v, log_v * log_v)
    return out


_EMPTY_ROLLUP = (0, None, None, 0.0, 0.0, 0.0)


def _batch_aggregates(
    events: Sequence[TelemetryEvent], new: Sequence[TelemetryEvent] | None = None
) -> list[list[Any]]:
    """UPSERT_AGGREGATES's parameters: what STORE_TELEMETRY_ARRAYS computes in SQL. The rollups
    count ``new`` (the events this write inserted; all of ``events`` when None), the series,
    series targets and models take every event of the batch, as that statement's ``src``.
    Events are grouped in one pass; the sums and extremes are taken by builtins, per group."""
    if new is not None and len(new) != len(events):
        counted = _batch_aggregates(new)[:_ROLLUP_PARAMS] if new else [[] for _ in range(_ROLLUP_PARAMS)]
        return counted + _batch_aggregates(events)[_ROLLUP_PARAMS:]
    minutes: dict[tuple[str, str, str, str, datetime], list[TelemetryEvent]] = {}
    by_model: dict[tuple[str, str], list[TelemetryEvent]] = {}
    # The minute of the previous event, reused while events stay in it: a batch is mostly in time
    # order, and ``datetime.replace`` was a fifth of this function's time.
    minute = end = _NEVER
    zone = None
    for ev in events:
        provider: str = ev.provider
        ts = ev.ts
        if not (minute <= ts < end and ts.tzinfo is zone):
            minute = ts.replace(second=0, microsecond=0)
            end, zone = minute + _MINUTE, ts.tzinfo
        key = (provider, ev.model, ev.prompt_id, ev.target, minute)
        group = minutes.get(key)
        if group is None:
            minutes[key] = [ev]
        else:
            group.append(ev)
        group = by_model.get(key[:2])
        if group is None:
            by_model[key[:2]] = [ev]
        else:
            group.append(ev)
    rollups: list[tuple[Any, ...]] = []
    series: dict[tuple[Any, ...], list[datetime]] = {}
    targets: dict[tuple[Any, ...], list[datetime]] = {}
    for key in sorted(minutes):
        group = minutes[key]
        ok = [ev for ev in group if ev.status == "ok"]
        row: list[Any] = [*key, len(group), len(ok)]
        for metric in _ROLLUP_METRICS:
            row += _metric_rollup([v for v in map(metric, ok) if v is not None])
        rollups.append(tuple(row))
        stamps = list(map(_ts, group))
        lo, hi = min(stamps), max(stamps)
        for spans, span_key in ((series, key[:3]), (targets, key[:4])):
            span = spans.get(span_key)
            if span is None:
                spans[span_key] = [lo, hi]
            else:
                span[0], span[1] = min(span[0], lo), max(span[1], hi)
    out: list[list[Any]] = [list(column) for column in zip(*rollups, strict=True)]
    for spans, width in ((series, 3), (targets, 4)):
        keys = sorted(spans)
        out += ([k[i] for k in keys] for i in range(width))
        out += ([spans[k][i] for k in keys] for i in range(2))
    mkeys = sorted(by_model)
    # The latest of a model's events; of two at the same time, the later in the batch.
    latest = [max(reversed(by_model[k]), key=_ts) for k in mkeys]
    out += ([k[i] for k in mkeys] for i in range(2))
    out.append([min(map(_ts, by_model[k])) for k in mkeys])
    for col in ("ts", "target", "host", "status", "cpu_percent", "memory_percent", "gpu_percent"):
        out.append([getattr(ev, col) for ev in latest])
    out.append([ev.gpu_memory_percent for ev in latest])
    return out


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


# SQLSTATE classes that blame the data: data exception (22: out of range, bad encoding, NUL),
# integrity constraint violation (23) and program limit exceeded (54: an index row too large).
_DATA_ERROR_CLASSES = ("22", "23", "54")


def refused_for_its_data(exc: BaseException) -> bool:
    """Postgres (or the driver, before sending) refuses the values themselves: retrying the same
    event can never succeed, so it is dead-lettered at once with the reason."""
    if isinstance(exc, asyncpg.exceptions._base.DataError):  # an argument its column cannot hold
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state[:2] in _DATA_ERROR_CLASSES


_telemetry_values = operator.attrgetter(*TELEMETRY_COLUMNS)


_record_id = operator.itemgetter(0)  # TELEMETRY_COLUMNS[0] is the id


def telemetry_record(ev: TelemetryEvent) -> tuple[Any, ...]:
    values: tuple[Any, ...] = _telemetry_values(ev)  # one C call for the 35 columns
    return values


async def store_telemetry(
    conn: Conn,
    events: Sequence[TelemetryEvent],
    *,
    serial: asyncio.Lock | None = None,
    copy_min_rows: int = COPY_MIN_ROWS,
) -> int:
    """Store a batch in one transaction; returns how many were new.

    ``serial``: held from the batch's aggregates statement until its COMMIT is done, so that
    batches stored at once on other connections (``ConsumerOptions.concurrent``) COPY their rows
    meanwhile but upsert the shared rollup, series and model rows one transaction after the
    other (each would wait for the other's row locks anyway; taken in two orders at once they
    could deadlock). A batch of ``copy_min_rows`` or more takes its telemetry rows before
    ``serial`` and never waits for one while it holds it; a smaller batch's one statement runs
    under it whole, so it is for a batch that no other batch's store overlaps (the consumer
    handles a batch that is not full alone) or with ``copy_min_rows`` 1."""
    if not events:
        return 0
    held: contextlib.AbstractAsyncContextManager[object] = serial or contextlib.nullcontext()
    if len(events) == 1 and copy_min_rows > 1:
        # One statement is its own transaction: no BEGIN and COMMIT round trips.
        ev = events[0]
        async with held:
            one: int = await conn.fetchval(STORE_ONE_TELEMETRY, *telemetry_record(ev), *_one_rollup(ev))
        return one
    if len(events) < copy_min_rows:
        # One statement is its own transaction: no BEGIN and COMMIT round trips.
        records = [telemetry_record(ev) for ev in events]
        columns = [list(c) for c in zip(*records, strict=True)]
        async with held:
            inserted: int = await conn.fetchval(STORE_TELEMETRY_ARRAYS, *columns)
        return inserted
    firsts: dict[str, TelemetryEvent] = {}
    for ev in events:
        firsts.setdefault(ev.id, ev)  # a duplicate inside the batch is the same event
    unique = list(firsts.values())  # batch order: of two equal times, the later is a model's latest
    # Rows go in id order (code point order, as _ID_ORDER): two batches stored at once that each
    # hold twins of the other's events (a redelivery) lock the ids they share in one order, so one
    # waits for the other's COMMIT instead of both waiting for each other (a deadlock, aborted).
    records = sorted(map(telemetry_record, unique), key=_record_id)
    try:
        # The common case, no event stored yet: COPY straight into the table (as fast as
        # Postgres takes rows), the batch's aggregates computed here.
        # The stack is left after the transaction: ``serial`` is released once COMMIT is done.
        async with contextlib.AsyncExitStack() as until_committed, conn.transaction():
            await conn.copy_records_to_table("telemetry", records=records, columns=TELEMETRY_COLUMNS)
            aggregates = _batch_aggregates(unique)
            await until_committed.enter_async_context(held)
            await conn.execute(UPSERT_AGGREGATES, *aggregates)
        return len(unique)
    except asyncpg.UniqueViolationError:
        pass  # a redelivery (or another persister's copy): the rows not stored yet, and only those
    async with contextlib.AsyncExitStack() as until_committed, conn.transaction():
        await conn.execute(CREATE_TELEMETRY_IN)
        await conn.copy_records_to_table("telemetry_in", records=records, columns=TELEMETRY_COLUMNS)
        # The rows are inserted before ``serial`` is taken, as COPY's are: a batch holding it
        # never waits for a telemetry row of the batch that waits for it (a wait Postgres
        # cannot see, so it would never break it).
        ids = {row[0] for row in await conn.fetch(INSERT_NEW_TELEMETRY)}
        new = [ev for ev in unique if ev.id in ids]
        aggregates = _batch_aggregates(unique, new)
        await until_committed.enter_async_context(held)
        await conn.execute(UPSERT_AGGREGATES, *aggregates)
    return len(new)


def violation_record(ev: ViolationEvent) -> tuple[Any, ...]:
    lim = ev.limits
    return (
        ev.id,
        ev.episode_id,
        ev.ts,
        ev.provider,
        ev.model,
        ev.target,
        ev.host,
        ev.prompt_id,
        ev.metric,
        ev.chart,
        ev.chart_key,
        ev.rule,
        ev.rule_name,
        ev.severity,
        ev.value,
        ev.statistic,
        ev.deviation_sigma,
        lim.transform,
        lim.center,
        lim.sigma,
        lim.ucl,
        lim.lcl,
        lim.zone_a_upper,
        lim.zone_a_lower,
        lim.zone_b_upper,
        lim.zone_b_lower,
        ev.baseline.id,
        ev.baseline.n,
        list(ev.point_ids),
        msgspec.to_builtins(ev),
    )


async def store_violations(conn: Conn, events: Sequence[ViolationEvent]) -> int:
    """Store opens as episodes and apply clears to them, in one transaction; returns events seen."""
    opens = [ev for ev in events if ev.state == "open"]
    clears = [ev for ev in events if ev.state == "cleared"]
    async with conn.transaction():
        if opens:
            await conn.executemany(INSERT_VIOLATION, [violation_record(ev) for ev in opens])
        if clears:
            await conn.executemany(
                INSERT_CLEAR, [(ev.id, ev.episode_id, ev.ts, msgspec.to_builtins(ev)) for ev in clears]
            )
            await conn.executemany(APPLY_CLEAR, [(ev.episode_id, ev.ts, ev.id) for ev in clears])
    return len(events)


async def store_dead_letters(conn: Conn, events: Sequence[DeadLetterEvent]) -> int:
    async with conn.transaction():
        await conn.executemany(
            INSERT_DEAD_LETTER,
            [
                (e.id, e.ts, e.source, e.subject, e.reason, e.payload, e.payload_encoding, e.stream_seq)
                for e in events
            ],
        )
    return len(events)


# "Latest" is the row the API saw last (a chart whose engine state was reset numbers from 0 again);
# a baseline with no recorded start ages from when the API first saw it.
DELETE_OLD_BASELINES = """DELETE FROM baseline_history b
    WHERE coalesce(b.started_at, b.seen_at) < $1
      AND EXISTS (SELECT 1 FROM baseline_history n
                  WHERE n.chart_key = b.chart_key AND (n.seen_at, n.number) > (b.seen_at, b.number))"""


async def apply_retention(
    pool: asyncpg.Pool, settings: ApiSettings, now: datetime | None = None
) -> dict[str, int]:
    """Delete rows older than their retention (0 days keeps them forever); returns rows deleted."""
    now = now or datetime.now(UTC)
    plan = [
        ("telemetry", "ts", "", settings.retention_telemetry_days),
        ("telemetry_minute", "minute", "", settings.retention_rollup_days),
        ("telemetry_hour", "hour", "", settings.retention_rollup_days),
        ("telemetry_series_hour", "hour", "", settings.retention_rollup_days),
        ("violations", "ts", "", settings.retention_violations_days),
        ("violation_clears", "ts", "", settings.retention_violations_days),
        # An incident goes with its violations, once it is resolved (an open one is still work).
        ("incidents", "resolved_at", "AND state = 'resolved'", settings.retention_violations_days),
        ("dead_letters", "ts", "", settings.retention_deadletter_days),
    ]
    deleted: dict[str, int] = {}
    for table, column, also, days in plan:
        if days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        # The first run after retention is turned on may delete months at once: a limit of its
        # own, not the one meant for the dashboard's reads.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(RETENTION_TIMEOUT_S * 1000)}")
            status = await conn.execute(
                f"DELETE FROM {table} WHERE {column} < $1 {also}", cutoff, timeout=RETENTION_TIMEOUT_S + 5
            )
        deleted[table] = int(status.rsplit(" ", 1)[-1])
    # A re-baseline is a mark on a chart drawn from telemetry or the rollups, so its row goes once
    # neither can show its time any more; each chart's latest row stays whatever its age (the
    # chart's current baseline, still drawn however long ago it was frozen).
    drawn = (settings.retention_telemetry_days, settings.retention_rollup_days)
    if min(drawn) > 0:
        cutoff = now - timedelta(days=max(drawn))
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(RETENTION_TIMEOUT_S * 1000)}")
            status = await conn.execute(DELETE_OLD_BASELINES, cutoff, timeout=RETENTION_TIMEOUT_S + 5)
        deleted["baseline_history"] = int(status.rsplit(" ", 1)[-1])
    return deleted


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def tune_gc() -> None:
    """Collect the youngest generation every ``GC_YOUNGEST_THRESHOLD`` allocations, not every 700.

    A batch keeps thousands of young objects alive until its COMMIT (nats-py's messages and their
    header dicts, the decoded events, the rows), so at the default threshold every collection
    walks them again: 3-5 of the drain's 25 us of client CPU per event went to the cyclic GC
    (``bench/ingest_bench.py`` (e); events are freed by reference counting, not by it). Process
    wide, and idempotent: the process that runs the persister sets it at start."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, older, oldest)


def persister_consumer_options(**overrides: Any) -> ConsumerOptions:
    """How the persister consumes: batches of up to ``PERSIST_BATCH``; a Postgres outage of any
    length is waited out (the batch is held and retried with capped backoff, never
    dead-lettered); a batch refused for its data is split so only the guilty events are
    dead-lettered (:meth:`Persister._write`).

    Each consumer keeps one pull request open (``standing``): at a trickle one request and one
    expiry status a second, not two requests per wake-up, and what arrives while a batch is
    written is the next batch at once (no fill wait for it). An idle persister that wakes for one
    event waits up to ``FILL_WAIT_S`` for the events behind it, so a steady rate is written in
    batches (a transaction per event cost ~1.5 ms each); but only while the rate says another
    event will come within the wait (:class:`llmscope.bus.consumer.StandingPull`): at 100 events/s
    no batch could grow in 3 ms, and each event went 3 ms later for nothing. Acks stay one per
    message: several API processes may run a persister on the same durable consumer, and an
    AckAll from one would ack what another has not committed yet. With a backlog, the next batch
    is pulled while one is written (``prefetch``): the client's parsing of one batch overlaps
    Postgres's work on the other."""
    options = ConsumerOptions(
        batch_size=PERSIST_BATCH,
        transient=postgres_unavailable,
        fill_wait=FILL_WAIT_S,
        prefetch=True,
        standing=True,
    )
    return replace(options, **overrides)


class KeptConnections:
    """Pool connections kept between batches instead of released (and reset) after each.

    Only the persister's own writes use them, and those leave no session state behind but the
    temporary table meant to stay (``CREATE_TELEMETRY_IN``): a connection whose batch failed
    in any way goes back through the pool's release (reset, or closed if broken), and one left
    unused for ``keep_s`` is released."""

    def __init__(self, pool: asyncpg.Pool, keep_s: float = KEEP_CONNECTION_S) -> None:
        self._pool = pool
        self._keep_s = keep_s
        self._idle: list[tuple[PoolConnectionProxy, asyncio.TimerHandle | None]] = []
        self._releasing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PoolConnectionProxy]:
        if self._idle:
            conn, timer = self._idle.pop()
            if timer is not None:
                timer.cancel()
        else:
            conn = await self._pool.acquire()
        try:
            yield conn
        except BaseException:
            await self._pool.release(conn)
            raise
        if self._keep_s <= 0 or conn.is_closed():
            await self._pool.release(conn)
            return
        timer = asyncio.get_running_loop().call_later(self._keep_s, self._expire, conn)
        self._idle.append((conn, timer))

    def _expire(self, conn: PoolConnectionProxy) -> None:
        for i, (kept, _) in enumerate(self._idle):
            if kept is conn:
                del self._idle[i]
                task = asyncio.ensure_future(self._pool.release(conn))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
                return

    async def close(self) -> None:
        """Give every kept connection back to the pool."""
        idle, self._idle = self._idle, []
        for conn, timer in idle:
            if timer is not None:
                timer.cancel()
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)


class Persister:
    """Durable consumers (telemetry, violations, dead letters, incidents) writing through one pool."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        publisher: Publisher,
        batch_size: int = PERSIST_BATCH,
        metrics: ApiMetrics | None = None,
        durable_prefix: str = subjects.PERSISTER,
        options: ConsumerOptions | None = None,
        lag_sample_s: float = LAG_SAMPLE_S,
        on_stored: Callable[[str, Sequence[Any]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._kept = KeptConnections(pool)
        # Told after each committed write (kind, the events written): the open dashboard tabs
        # re-read a chart once its new points can be read, never before.
        self._on_stored = on_stored
        self._metrics = metrics
        self._js = js
        self.lag_sample_s = lag_sample_s
        # Their names are in the `persister` NATS user's allow list (llmscope.proto.permissions).
        self._durables = {
            stream: subjects.persister_durable(stream, durable_prefix)
            for stream in subjects.PERSISTER_STREAMS
        }
        consumers = metrics.consumers if metrics is not None else None
        dead = DeadLetters(publisher, SOURCE)
        opts = options or persister_consumer_options(batch_size=batch_size)
        self._serial = asyncio.Lock()
        quiet = (
            replace(opts, fetch_timeout=max(opts.fetch_timeout, QUIET_EXPIRES_S)) if opts.standing else opts
        )
        self.telemetry = DurableConsumer[TelemetryEvent](
            js=js,
            stream=subjects.STREAM_TELEMETRY,
            durable=self._durables[subjects.STREAM_TELEMETRY],
            filter_subjects=[subjects.TELEMETRY_ALL],
            decode=lambda b: codec.decode_as(b, TelemetryEvent),
            handler=self.on_telemetry,
            dead_letters=dead,
            # Only telemetry: a violation batch's clears must find the episodes opened before them.
            options=replace(opts, concurrent=TELEMETRY_CONCURRENT) if not opts.ack_all else opts,
            metrics=consumers,
        )
        self.violations = DurableConsumer[ViolationEvent](
            js=js,
            stream=subjects.STREAM_VIOLATIONS,
            durable=self._durables[subjects.STREAM_VIOLATIONS],
            filter_subjects=[subjects.VIOLATIONS_ALL],
            decode=lambda b: codec.decode_as(b, ViolationEvent),
            handler=self.on_violations,
            dead_letters=dead,
            options=quiet,
            metrics=consumers,
        )
        self.dead_letters = DurableConsumer[DeadLetterEvent](
            js=js,
            stream=subjects.STREAM_DEADLETTER,
            durable=self._durables[subjects.STREAM_DEADLETTER],
            filter_subjects=[subjects.DEADLETTER_ALL],
            decode=lambda b: codec.decode_as(b, DeadLetterEvent),
            handler=self.on_dead_letters,
            dead_letters=dead,
            options=quiet,
            metrics=consumers,
        )
        self.incidents = DurableConsumer[IncidentEvent](
            js=js,
            stream=subjects.STREAM_INCIDENTS,
            durable=self._durables[subjects.STREAM_INCIDENTS],
            filter_subjects=[subjects.INCIDENTS_ALL],
            decode=lambda b: codec.decode_as(b, IncidentEvent),
            handler=self.on_incidents,
            dead_letters=dead,
            options=quiet,
            metrics=consumers,
        )

    def _count(self, kind: str, stored: int) -> None:
        if self._metrics is not None:
            self._metrics.persisted.labels(kind).inc(stored)
            self._metrics.batches.labels(kind).inc()

    async def on_telemetry(self, batch: Sequence[Delivery[TelemetryEvent]]) -> Mapping[int, str]:
        store = functools.partial(store_telemetry, serial=self._serial)
        # One by one (a batch refused for its data), while another batch may be in its store:
        # each event takes its row before ``serial``, as a large batch does (store_telemetry).
        each = functools.partial(store_telemetry, serial=self._serial, copy_min_rows=1)
        return await self._write("telemetry", batch, store, each)

    async def on_violations(self, batch: Sequence[Delivery[ViolationEvent]]) -> Mapping[int, str]:
        return await self._write("violations", batch, store_violations)

    async def on_dead_letters(self, batch: Sequence[Delivery[DeadLetterEvent]]) -> Mapping[int, str]:
        return await self._write("dead_letters", batch, store_dead_letters)

    async def on_incidents(self, batch: Sequence[Delivery[IncidentEvent]]) -> Mapping[int, str]:
        return await self._write("incidents", batch, store_incidents)

    async def _write(
        self,
        kind: str,
        batch: Sequence[Delivery[E]],
        store: Callable[[Conn, Sequence[E]], Awaitable[int]],
        store_each: Callable[[Conn, Sequence[E]], Awaitable[int]] | None = None,
    ) -> Mapping[int, str]:
        """Store the batch; events Postgres refuses for their data are returned as rejected
        (each event then written alone by ``store_each``, by default ``store``)."""
        try:
            async with self._kept.connection() as conn:
                stored = await store(conn, [d.event for d in batch])
        except Exception as exc:
            if not refused_for_its_data(exc):
                raise  # unavailable: waited out by the consumer; anything else: counted tries
            if len(batch) == 1:
                return {0: f"refused by Postgres: {_describe(exc)}"}
            return await self._write_one_by_one(kind, batch, store_each or store)
        self._count(kind, stored)
        self._tell(kind, [d.event for d in batch])
        return {}

    def _tell(self, kind: str, events: Sequence[Any]) -> None:
        if self._on_stored is None or not events:
            return
        try:
            self._on_stored(kind, events)
        except Exception:  # a listener's bug must not make the bus redeliver stored events
            log.exception("on_stored listener failed", kind=kind)

    async def _write_one_by_one(
        self,
        kind: str,
        batch: Sequence[Delivery[E]],
        store: Callable[[Conn, Sequence[E]], Awaitable[int]],
    ) -> Mapping[int, str]:
        # Each event in its own transaction; an outage meanwhile propagates (what was stored
        # stays stored: the retry of the whole batch writes it once, by id).
        rejected: dict[int, str] = {}
        stored = 0
        async with self._pool.acquire() as conn:
            for index, delivery in enumerate(batch):
                try:
                    stored += await store(conn, [delivery.event])
                except Exception as exc:
                    if not refused_for_its_data(exc):
                        raise
                    rejected[index] = f"refused by Postgres: {_describe(exc)}"
        self._count(kind, stored)
        self._tell(kind, [d.event for i, d in enumerate(batch) if i not in rejected])
        return rejected

    async def run(self, stop: asyncio.Event) -> None:
        """Consume every stream until ``stop`` is set (a crashed consumer is restarted), and
        sample each consumer's lag from the server (with metrics)."""
        consumers = (self.telemetry, self.violations, self.dead_letters, self.incidents)
        lag = []
        if self._metrics is not None:
            metrics = self._metrics.consumers
            lag = [
                sample_consumers(metrics, self._js, stream, _constant((durable,)), stop, self.lag_sample_s)
                for stream, durable in self._durables.items()
            ]
        try:
            await asyncio.gather(*(self._supervise(c, stop) for c in consumers), *lag)
        finally:
            await self._kept.close()

    async def _supervise(self, consumer: DurableConsumer[Any], stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await consumer.run(stop)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consumer crashed; restarting in 1 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)


def _constant(durables: tuple[str, ...]) -> Callable[[], tuple[str, ...]]:
    return lambda: durables


async def retention_loop(
    pool: asyncpg.Pool, settings: ApiSettings, stop: asyncio.Event, every_s: float = 3600
) -> None:
    """Apply retention now and then every ``every_s`` seconds until ``stop``."""
    while not stop.is_set():
        try:
            deleted = await apply_retention(pool, settings)
            if any(deleted.values()):
                log.info("retention applied", **deleted)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def run_standalone(
    settings: ApiSettings, stop: asyncio.Event, *, metrics: ApiMetrics | None = None
) -> None:
    """The persister without the HTTP API, as an API process runs it (``LLMSCOPE_PERSISTER=true``)
    in all its users see: it publishes the same live notices (probes stored, a traffic chart's
    record written) on core NATS for the open tabs of the API processes, and serves its metrics
    (``llmscope_persister_*``, its consumers' lag and dead letters) with /healthz and /readyz on
    ``LLMSCOPE_PERSISTER_HEALTH_PORT``."""
    # Imported here: the web's broadcaster module (FastAPI) is of no use to the functions above,
    # which the web's tests and the alerter's import.
    from llmscope.api.live import LiveNotices
    from llmscope.bus.connection import connect
    from llmscope.config.health import start_health_server
    from llmscope.config.metrics import service_registry

    metrics = metrics or ApiMetrics(service_registry("persister", "llmscope-api"))
    clients: list[Any] = []  # the NATS connection, once its streams are in place

    def ready() -> bool:
        # Ready while NATS answers (Postgres outages are retried batch by batch, nothing lost).
        return not stop.is_set() and bool(clients) and clients[0].is_connected

    health = await start_health_server(
        settings.persister_health_host,
        settings.persister_health_port,
        ready=ready,
        registry=metrics.registry,
        host_variable="LLMSCOPE_PERSISTER_HEALTH_HOST",
        port_variable="LLMSCOPE_PERSISTER_HEALTH_PORT",
    )
    try:
        pool = await open_pool(
            settings.database_url.get(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            stop=stop,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
        try:
            nc = await connect(settings.bus.nats_url, "llmscope-persister", stop=stop)
        except BaseException:
            await pool.close()
            raise
        notices = LiveNotices()  # no tabs of its own: a lost notice waits for the model's next
        notices.attach(nc)
        try:
            js = nc.jetstream()
            await prepare(js, settings.bus, stop)
            clients.append(nc)
            persister = Persister(
                pool=pool,
                js=js,
                publisher=Publisher(js),
                batch_size=settings.persist_batch,
                metrics=metrics,
                on_stored=notices.on_stored,
            )
            history = BaselineHistory(lambda: pool, settings.charts_bucket, on_record=notices.on_chart)
            await asyncio.gather(
                persister.run(stop), retention_loop(pool, settings, stop), history.run(nc, stop)
            )
        finally:
            await notices.stop()
            await nc.drain()
            await pool.close()
    finally:
        if health is not None:
            await health.stop()


def main(argv: list[str] | None = None) -> int:
    """``llmscope persister`` / ``python -m llmscope.api.persister``: the persister without the
    HTTP API."""
    from llmscope.config.env import ConfigError
    from llmscope.config.envhelp import BUS_SETTINGS, service_parser

    service_parser(
        "llmscope persister",
        "The persister alone (telemetry, violations, incidents and dead letters from NATS into "
        "Postgres), beside API processes with LLMSCOPE_PERSISTER=false. Configured by the "
        "environment (LLMSCOPE_API_KEY not needed); exits 0 on SIGINT/SIGTERM.",
        ApiSettings.__module__,
        BUS_SETTINGS,
    ).parse_args(argv)
    try:
        settings = ApiSettings.from_env(require_api_key=False)
    except ConfigError as exc:
        print(f"llmscope persister: {exc}", file=sys.stderr)
        return 2
    setup_logging("persister", settings.log_level)
    tune_gc()

    async def _run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run_standalone(settings, stop)

    try:
        eventloop.run(_run())  # uvloop when installed, as the API under uvicorn
    except ConfigError as exc:  # its health port taken: as a bad setting, exit 2
        print(f"llmscope persister: {exc}", file=sys.stderr)
        return 2
    except Unusable as exc:
        print(f"llmscope persister: {exc}", file=sys.stderr)
        return 1
    except Stopped:
        log.info("stopped during start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
