"""The persister stores each event once, keeps rollups exact, and dead-letters what it cannot read."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from llmscope.api.baseline_history import INSERT as INSERT_BASELINE
from llmscope.api.chart_store import ChartStore
from llmscope.api.db import migrate, migrations
from llmscope.api.metrics import ApiMetrics
from llmscope.api.persister import (
    COPY_MIN_ROWS,
    GC_YOUNGEST_THRESHOLD,
    TELEMETRY_COLUMNS,
    TELEMETRY_TYPES,
    Persister,
    apply_retention,
    fold_hours,
    store_telemetry,
    store_violations,
    telemetry_record,
    tune_gc,
)
from llmscope.api.persister.sql import STORE_NEW_TELEMETRY_ARRAYS, TELEMETRY_KEY
from llmscope.api.persister.writes import refused_for_its_data
from llmscope.api.settings import ApiSettings
from llmscope.bus.publisher import Publisher
from llmscope.bus.streams import DEFAULT_TELEMETRY_PARTITIONS, telemetry_partition
from llmscope.config.env import Secret
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from tests.alerter.harness import eventually
from tests.api.factories import T0, cleared, telemetry, violation

EVERY_HOUR = datetime(2100, 1, 1, tzinfo=UTC)
"""``fold_hours(before=...)`` that folds every hour, the current one too."""


async def test_migrations_apply_once_even_when_raced(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        everything = len(migrations())
        assert sorted(len(r) for r in results) == [0, everything]
        assert await migrate(conns[0]) == []
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == everything
    finally:
        for c in conns:
            await c.close()


async def test_redelivered_batch_is_stored_once_and_rollups_count_once(pool: asyncpg.Pool) -> None:
    events = [telemetry(i) for i in range(10)] + [telemetry(10, status="timeout", latency_ms=30000.0)]
    async with pool.acquire() as conn:
        assert await store_telemetry(conn, events) == 11
        assert await store_telemetry(conn, events) == 0  # a redelivery
        assert await store_telemetry(conn, events[:3] + events[:3]) == 0  # duplicates inside a batch
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == 11
    roll = await pool.fetchrow(
        "SELECT sum(n) AS n, sum(n_ok) AS ok, sum(latency_n) AS ln, max(latency_max) AS mx"
        " FROM telemetry_minute"
    )
    assert roll is not None
    assert (roll["n"], roll["ok"], roll["ln"]) == (11, 10, 10)
    assert roll["mx"] == max(e.latency_ms or 0 for e in events[:10])  # the timeout is not latency
    model = await pool.fetchrow("SELECT * FROM models")
    assert model is not None
    assert (model["provider"], model["model"], model["last_status"]) == ("ollama", "llama3.1:8b", "timeout")
    assert await pool.fetchval("SELECT count(*) FROM series") == 1


async def test_a_small_batch_holding_a_stored_event_is_stored_by_the_arbitrating_statement(
    pool: asyncpg.Pool,
) -> None:
    """A small batch none of whose events is stored is one plain INSERT (no ON CONFLICT); one that
    holds an event stored already fails on telemetry's key, keeps nothing, and is stored again by
    the statement that skips stored rows: its new events counted once, the stored one not again.
    Inside the caller's own transaction (which a failed statement would abort) too."""
    events = [telemetry(i) for i in range(12)]
    async with pool.acquire() as conn:
        assert await store_telemetry(conn, events[:1]) == 1
        # The new-batch statement itself refuses a stored id, and nothing of it stays.
        records = [telemetry_record(ev) for ev in events[:3]]
        with pytest.raises(asyncpg.UniqueViolationError) as refused:
            await conn.fetchval(STORE_NEW_TELEMETRY_ARRAYS, records)
        assert refused.value.constraint_name == TELEMETRY_KEY
        assert await conn.fetchval("SELECT count(*) FROM telemetry") == 1
        assert await store_telemetry(conn, events[:3]) == 2
        async with conn.transaction():
            assert await store_telemetry(conn, events[2:6]) == 3
            assert await store_telemetry(conn, events[6:9]) == 3
        assert await store_telemetry(conn, events[8:12]) == 3
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == 12
    await fold_hours(pool, before=EVERY_HOUR)
    for table in ("telemetry_minute", "telemetry_series_hour"):
        assert await pool.fetchval(f"SELECT sum(n) FROM {table}") == 12, table
    total = await pool.fetchval("SELECT sum(latency_sum) FROM telemetry_minute")
    assert total == pytest.approx(sum(e.latency_ms or 0 for e in events))


async def test_migration_0018_drops_the_model_hour_rollups_the_series_hours_add_up_to(
    database_url: str,
) -> None:
    """On a store at 0017 the hourly rollups per model (0008, written beside the series' hours in
    one statement) are the series' hours summed per model, sums of squared logs included: 0018
    drops them, and the comparison sums the series' hours instead."""
    conn = await asyncpg.connect(database_url)
    try:
        for migration in migrations():
            if migration.version < 18:
                await conn.execute(migration.sql)
        # This code's statements mark minutes folded or not (0019, which 0018 does not touch), and
        # leave the series' hours to the fold, which reads whether their minutes are pruned (0020).
        for migration in migrations():
            if migration.version in (19, 20):
                await conn.execute(migration.sql)
        await store_telemetry(conn, _mixed_batch(400))
        fold_pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)  # not migrated
        try:
            assert await fold_hours(fold_pool, before=EVERY_HOUR) > 4
        finally:
            await fold_pool.close()
        # What the persister kept in telemetry_hour: 0008's fold of the minute rollups, with 0010's
        # sums of squared logs.
        sql = next(m.sql for m in migrations() if m.version == 8)
        await conn.execute(sql[sql.index("INSERT INTO telemetry_hour") :])
        await conn.execute(
            """UPDATE telemetry_hour h SET latency_logsq = s.a, ttft_logsq = s.b, tps_logsq = s.c
               FROM (SELECT provider, model, date_trunc('hour', minute) AS hour, sum(latency_logsq) AS a,
                            sum(ttft_logsq) AS b, sum(tps_logsq) AS c
                     FROM telemetry_minute GROUP BY 1, 2, 3) AS s
               WHERE (h.provider, h.model, h.hour) = (s.provider, s.model, s.hour)"""
        )
        columns = [
            f"{agg}({p}_{c})"
            for p in ("latency", "ttft", "tps")
            for agg, c in (("sum", "n"), ("min", "min"), ("max", "max"), ("sum", "sum"), ("sum", "logsum"))
        ] + [f"sum({p}_logsq)" for p in ("latency", "ttft", "tps")]
        query = f"""SELECT provider, model, hour, sum(n), sum(n_ok), {", ".join(columns)} FROM {{}}
                    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
        by_model = await conn.fetch(query.format("telemetry_hour"))
        summed = await conn.fetch(query.format("telemetry_series_hour"))
        assert len(by_model) > 4
        assert [tuple(r)[:5] for r in summed] == [tuple(r)[:5] for r in by_model]
        for got, want in zip(summed, by_model, strict=True):
            assert list(got)[5:] == pytest.approx(list(want)[5:])
        (migration,) = [m for m in migrations() if m.version == 18]
        await conn.execute(migration.sql)
        assert await conn.fetchval("SELECT to_regclass('telemetry_hour')") is None
        assert await store_telemetry(conn, [telemetry(i, id=f"after-{i}") for i in range(3)]) == 3
    finally:
        await conn.close()


async def test_migration_0017_adds_the_row_type_small_batches_are_sent_as(database_url: str) -> None:
    """On a store at 0016 that holds telemetry, 0017 adds telemetry_row: the persister's columns
    with telemetry's types, in TELEMETRY_COLUMNS's order (a column the persister writes and the
    type lacks fails here); the rows stored before stay, and a small batch is stored through it."""
    conn = await asyncpg.connect(database_url)
    try:
        for migration in migrations():
            if migration.version < 17:
                await conn.execute(migration.sql)
        stored = telemetry(0)
        await conn.execute(
            """INSERT INTO telemetry (id, ts, provider, model, target, prompt_id, prompt_hash, status)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            *(stored.id, stored.ts, stored.provider, stored.model, stored.target),
            *(stored.prompt_id, stored.prompt_hash, stored.status),
        )
        (migration,) = [m for m in migrations() if m.version == 17]
        await conn.execute(migration.sql)
        # The persister's columns and types, as Postgres names the types.
        expected = [
            (r["c"], r["t"])
            for r in await conn.fetch(
                "SELECT c, t::regtype::text AS t FROM unnest($1::text[], $2::text[]) AS u(c, t)",
                list(TELEMETRY_COLUMNS),
                [TELEMETRY_TYPES[c] for c in TELEMETRY_COLUMNS],
            )
        ]
        attributes = await conn.fetch(
            """SELECT a.attname, a.atttypid::regtype::text AS type
               FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid
               WHERE t.typname = 'telemetry_row' AND a.attnum > 0 AND NOT a.attisdropped
               ORDER BY a.attnum"""
        )
        assert [(r["attname"], r["type"]) for r in attributes] == expected
        table = await conn.fetch(
            """SELECT attname, atttypid::regtype::text AS type FROM pg_attribute
               WHERE attrelid = 'telemetry'::regclass AND attnum > 0 AND NOT attisdropped"""
        )
        assert set(expected) <= {(r["attname"], r["type"]) for r in table}
        for later in migrations():  # what this code's statements write besides
            if later.version > 17:
                await conn.execute(later.sql)
        assert await store_telemetry(conn, [telemetry(i) for i in range(4)]) == 3
        assert await conn.fetchval("SELECT count(*) FROM telemetry") == 4
    finally:
        await conn.close()


def _traffic(i: int, **overrides: Any) -> TelemetryEvent:
    """A request of an application's real traffic, from a host no prober runs on."""
    fields: dict[str, Any] = {
        "source": "traffic",
        "prompt_id": "traffic:chat",
        "target": "sim-gpu-1:8000",
        "host": "sim-gpu-1",
        "cpu_percent": None,
        "memory_percent": None,
        **overrides,
    }
    return telemetry(i, **fields)


_MODEL_STATE = "SELECT target, host, last_status, last_seen, first_seen, source FROM models WHERE model = $1"


@pytest.mark.parametrize("size", [1, 2, COPY_MIN_ROWS])
async def test_traffic_never_overwrites_a_probed_models_row(pool: asyncpg.Pool, size: int) -> None:
    """A probed model, then newer traffic for it from another host (a batch of ``size``: one event,
    array parameters, COPY), keeps its probe's target, host, status and last seen. A model seen only
    in traffic gets a row marked traffic-only; its first probe replaces it, even an older one, and
    a batch with both takes the probe."""
    probe = telemetry(0, status="timeout")
    later = probe.ts + timedelta(minutes=5)
    async with pool.acquire() as conn:
        await store_telemetry(conn, [probe])
        before = await conn.fetchrow(_MODEL_STATE, probe.model)
        traffic = [_traffic(1000 + i, ts=later + timedelta(seconds=i)) for i in range(size)]
        assert await store_telemetry(conn, traffic) == size
        assert await conn.fetchrow(_MODEL_STATE, probe.model) == before
        assert before is not None
        assert tuple(before) == ("local", "gpu-1", "timeout", probe.ts, probe.ts, "probe")

        app = [_traffic(2000 + i, model="app-model", ts=later + timedelta(seconds=i)) for i in range(size)]
        assert await store_telemetry(conn, app) == size
        row = await conn.fetchrow(_MODEL_STATE, "app-model")
        assert row is not None
        assert tuple(row) == ("sim-gpu-1:8000", "sim-gpu-1", "ok", app[-1].ts, later, "traffic")
        # Its first probe, older than the traffic: the row is the probe's from then on.
        first = telemetry(3000, model="app-model", ts=probe.ts, status="ok")
        more = [
            _traffic(4000 + i, model="app-model", ts=later + timedelta(minutes=1, seconds=i))
            for i in range(size)
        ]
        assert await store_telemetry(conn, [first, *more]) == size + 1
        row = await conn.fetchrow(_MODEL_STATE, "app-model")
        assert row is not None
        assert tuple(row) == ("local", "gpu-1", "ok", probe.ts, probe.ts, "probe")
        assert (
            await store_telemetry(conn, [_traffic(5000, model="app-model", ts=later + timedelta(hours=1))])
            == 1
        )
        assert await conn.fetchrow(_MODEL_STATE, "app-model") == row


async def test_migration_gives_probed_models_their_probes_row_back(pool: asyncpg.Pool) -> None:
    """Rows that traffic overwrote before migration 0015 take back their latest probe; a model
    seen only in traffic is marked so."""
    probes = [telemetry(0, status="ok"), telemetry(1, status="timeout", prompt_id="simple-2")]
    traffic = _traffic(9, ts=probes[1].ts + timedelta(minutes=5))
    app = _traffic(10, model="app-model")
    async with pool.acquire() as conn:
        await store_telemetry(conn, [*probes, traffic, app])
        # What the persister wrote before: the latest event of any kind.
        await conn.execute(
            "UPDATE models SET target = $2, host = $3, last_seen = $4, source = 'probe' WHERE model = $1",
            probes[0].model,
            traffic.target,
            traffic.host,
            traffic.ts,
        )
        await conn.execute("UPDATE models SET source = 'probe' WHERE model = 'app-model'")
        await conn.execute("ALTER TABLE models DROP COLUMN source")
        (migration,) = [m for m in migrations() if m.version == 15]
        await conn.execute(migration.sql)
        row = await conn.fetchrow(_MODEL_STATE, probes[0].model)
        assert row is not None
        assert tuple(row) == ("local", "gpu-1", "timeout", probes[1].ts, probes[0].ts, "probe")
        row = await conn.fetchrow(_MODEL_STATE, "app-model")
        assert row is not None
        assert tuple(row)[-1] == "traffic"


@pytest.mark.parametrize("size", [1, COPY_MIN_ROWS - 1, COPY_MIN_ROWS])
async def test_small_and_large_batches_store_the_same_rows(pool: asyncpg.Pool, size: int) -> None:
    """A small batch goes as array parameters, a large one through COPY: the same rows either way."""
    events = [
        telemetry(
            i,
            model=f"m{i % 3}",
            streaming=bool(i % 2),
            max_tokens=64 if i % 2 else None,
            http_status=200 if i % 3 else 503,
            status="ok" if i % 3 else "http_5xx",
            error=None if i % 3 else "upstream 503",
            prompt_text="why?\n" if i % 4 == 0 else None,
            gpu_percent=None if i % 2 else 99.5,
            prompt_eval_count=7,
        )
        for i in range(size)
    ]
    async with pool.acquire() as conn:
        assert await store_telemetry(conn, events + events[:1]) == size  # a duplicate in the batch too
        assert await store_telemetry(conn, events) == 0
    rows = await pool.fetch(f"SELECT {', '.join(TELEMETRY_COLUMNS)} FROM telemetry ORDER BY id")
    assert [tuple(r) for r in rows] == [telemetry_record(ev) for ev in sorted(events, key=lambda e: e.id)]
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == size
    assert await pool.fetchval("SELECT count(*) FROM models") == min(size, 3)


def _mixed_batch(n: int) -> list[TelemetryEvent]:
    """Events over 4 models, 2 targets, 2 prompts and several minutes, some failed, some metrics absent,
    two with the same timestamp for one model (the later in the batch is the model's latest), some
    of an application's traffic beside the probes (the last event too), and a model seen only in
    traffic."""
    return [
        telemetry(
            i,
            ts=T0 + timedelta(seconds=7 * (377 if i == 381 else i)),
            model="app" if i % 31 == 3 else f"m{i % 4}",
            source="traffic" if i % 31 == 3 or i % 29 == 1 or i == n - 1 else "probe",
            target=f"t{i % 2}",
            prompt_id="traffic:chat" if i % 31 == 3 or i % 29 == 1 or i == n - 1 else f"p{i % 5 % 2}",
            status="timeout" if i % 11 == 0 else "ok",
            latency_ms=None if i % 13 == 0 else 100.0 + (i * 37 % 101),
            ttft_ms=None if i % 3 == 0 else 0.0 if i % 17 == 0 else 10.0 + i % 9,
            tokens_per_s=40.0 + i % 6,
            host=f"h{i}",
            gpu_percent=None if i % 2 else float(i % 100),
        )
        for i in range(n)
    ]


_AGGREGATE_TABLES = {
    "telemetry_minute": "provider, model, prompt_id, target, minute",
    "telemetry_series_hour": "provider, model, prompt_id, target, hour",
    "series": "provider, model, prompt_id",
    "series_targets": "provider, model, prompt_id, target",
    "models": "provider, model",
}


async def _aggregates(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    await fold_hours(pool, before=EVERY_HOUR)  # the hours, folded from the minutes each path wrote
    out: dict[str, list[tuple[Any, ...]]] = {}
    for table, key in _AGGREGATE_TABLES.items():
        rows = await pool.fetch(f"SELECT * FROM {table} ORDER BY {key}")
        # updated_at is the clock's; floats are compared with a tolerance (_same_aggregates).
        out[table] = [tuple(v for k, v in r.items() if k != "updated_at") for r in rows]
    return out


def _same_aggregates(got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]) -> bool:
    """Equal, floats within a relative 1e-9: sums of floats taken in another order may differ in
    their last bits (rounding both to 9 places failed whenever they fell on either side of a
    rounding boundary, which depended on the test's clock)."""
    if got.keys() != want.keys():
        return False
    for table in want:
        if len(got[table]) != len(want[table]):
            return False
        for row, expected in zip(got[table], want[table], strict=True):
            if len(row) != len(expected):
                return False
            for a, b in zip(row, expected, strict=True):
                if isinstance(a, float) and isinstance(b, float):
                    if not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
                        return False
                elif a != b:
                    return False
    return True


def _few_batches(events: list[TelemetryEvent], most: int = 16) -> list[list[TelemetryEvent]]:
    """Batches of 2 to ``most`` events (a steady 1,000/s), each but the first beginning with the
    last event of the batch before (a redelivery beside new events), every fifth size holding an
    event twice."""
    batches: list[list[TelemetryEvent]] = []
    start, size = 0, 2
    while start < len(events):
        batch = events[start : start + size]
        batches.append(batch + batch[:1] if size % 5 == 0 else batch)
        start += size - 1
        size = size + 1 if size < most else 2
    return batches


async def test_every_write_path_keeps_the_same_rollups_series_and_models(pool: asyncpg.Pool) -> None:
    """Small batches (one statement), a large new batch (COPY, aggregates computed by the persister),
    a large batch partly stored already (a redelivery: only its new rows count), a few events at a
    time (some redelivered beside new ones, some twice in a batch) and one event at a time, some
    twice, agree."""
    events = _mixed_batch(3 * COPY_MIN_ROWS)
    assert len(events) > 381
    assert len({(e.model, e.ts) for e in events}) < len(events)  # a tie for a model's latest
    seen: list[dict[str, list[tuple[Any, ...]]]] = []
    plans: list[list[list[TelemetryEvent]]] = [
        [events[i : i + 40] for i in range(0, len(events), 40)],
        [events],
        [events[: COPY_MIN_ROWS + 20], events],
        # One event a batch (a trickle: plain parameters, the rollup row computed by the
        # persister), some redelivered: each counted once.
        [[e] for e in events] + [[e] for e in events[::7]],
        _few_batches(events),
    ]
    for plan in plans:
        async with pool.acquire() as conn:
            await conn.execute(f"TRUNCATE telemetry, {', '.join(_AGGREGATE_TABLES)}")
            stored = [await store_telemetry(conn, batch) for batch in plan]
        assert sum(stored) == len(events)
        assert await pool.fetchval("SELECT count(*) FROM telemetry") == len(events)
        seen.append(await _aggregates(pool))
    for other in seen[1:]:
        assert _same_aggregates(other, seen[0]), other
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == len(events)
    assert await pool.fetchval("SELECT sum(n) FROM telemetry_series_hour") == len(events)
    # Each series' hours: the minute rollups of that prompt on that target, folded.
    folded = await pool.fetch(
        """SELECT provider, model, prompt_id, target, date_trunc('hour', minute) AS hour, sum(n) AS n,
                  sum(latency_n) AS latency_n, min(latency_min) AS latency_min,
                  sum(ttft_logsq) AS ttft_logsq
           FROM telemetry_minute GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"""
    )
    hours = await pool.fetch(
        f"""SELECT {", ".join(folded[0].keys())} FROM telemetry_series_hour
            ORDER BY provider, model, prompt_id, target, hour"""
    )
    assert len(hours) > len(
        {(r["provider"], r["model"], r["hour"]) for r in hours}
    )  # prompts and targets apart
    assert [tuple(r.values())[:-1] for r in hours] == [tuple(r.values())[:-1] for r in folded]
    assert [r["ttft_logsq"] for r in hours] == pytest.approx([r["ttft_logsq"] for r in folded])
    assert await pool.fetchval("SELECT count(DISTINCT target) FROM telemetry_minute") == 2
    assert len(seen[0]["telemetry_minute"]) > 10
    # The tie for m1's latest went to the later event of the batch (its host).
    assert await pool.fetchval("SELECT host FROM models WHERE model = 'm1'") == "h381"
    # Each model's row is its latest probe's, though traffic came later on some (a traffic-only
    # model has a row of its own).
    latest = {
        m: max(e.ts for e in events if e.model == m and e.source == ("traffic" if m == "app" else "probe"))
        for m in ("app", "m0", "m1", "m2", "m3")
    }
    assert any(e.ts > latest[e.model] for e in events if e.source == "traffic" and e.model != "app")
    rows = await pool.fetch("SELECT model, source, last_seen FROM models ORDER BY model")
    assert [tuple(r) for r in rows] == [
        (m, "traffic" if m == "app" else "probe", latest[m]) for m in sorted(latest)
    ]


async def test_a_series_row_is_rewritten_once_a_minute_and_read_to_the_microsecond(
    pool: asyncpg.Pool,
) -> None:
    """``series`` and ``series_targets`` keep a series' first event exact and the minute of its
    last (migration 0018): events within the minute its row holds leave the row unwritten (its
    xmin stays), on every write path; a later minute or an earlier event widens it. The targets
    are still ordered by their exact last probe, which readers find in telemetry."""
    minute = T0.replace(second=0) + timedelta(minutes=1)
    at = [minute + timedelta(seconds=s, microseconds=250) for s in (5, 20, 41, 59)]

    async def rows() -> dict[str, tuple[Any, ...]]:
        return {
            table: tuple(r)
            for table in ("series", "series_targets")
            for r in await pool.fetch(f"SELECT xmin::text, first_seen, last_seen FROM {table}")
        }

    async with pool.acquire() as conn:
        await store_telemetry(conn, [telemetry(0, ts=at[0])])  # one event
        first = await rows()
        assert {row[1:] for row in first.values()} == {(at[0], minute)}
        await store_telemetry(conn, [telemetry(1, ts=at[1])])
        await store_telemetry(conn, [telemetry(2, ts=at[2]), telemetry(3, ts=at[3])])  # one statement
        await store_telemetry(conn, [telemetry(4 + i, ts=at[3]) for i in range(COPY_MIN_ROWS)])  # COPY
        assert await rows() == first
        await store_telemetry(conn, [telemetry(9000, ts=minute + timedelta(minutes=1, seconds=3))])
        await store_telemetry(conn, [telemetry(9001, ts=minute - timedelta(seconds=1))])
        assert {row[1:] for row in (await rows()).values()} == {
            (minute - timedelta(seconds=1), minute + timedelta(minutes=1))
        }
        # Two targets probed within one minute: the later probe's first, to the microsecond.
        store = ChartStore(pool)
        key = ("ollama", "llama3.1:8b", "simple-1")
        later = minute + timedelta(minutes=5)
        await store_telemetry(conn, [telemetry(9002, ts=later + timedelta(seconds=10), target="b")])
        await store_telemetry(conn, [telemetry(9003, ts=later + timedelta(seconds=40), target="a")])
        assert await store.targets(*key) == ["a", "b", "local"]
        await store_telemetry(
            conn, [telemetry(9004, ts=later + timedelta(seconds=40, microseconds=1), target="b")]
        )
        assert await store.targets(*key) == ["b", "a", "local"]
        assert (
            await pool.fetchval(
                "SELECT count(DISTINCT last_seen) FROM series_targets WHERE target <> 'local'"
            )
            == 1
        )


async def test_cleared_event_closes_its_episode_in_either_order(pool: asyncpg.Pool) -> None:
    point = telemetry(1)
    first, second = violation(point), violation(point, rule="R2")
    async with pool.acquire() as conn:
        await store_violations(conn, [first])
        await store_violations(conn, [cleared(first, point.ts + timedelta(seconds=30))])
        # A clear that arrives before its open (after a redelivery) is applied when the open lands.
        await store_violations(conn, [cleared(second, point.ts + timedelta(seconds=40))])
        await store_violations(conn, [second, second])
    rows = {r["id"]: r for r in await pool.fetch("SELECT id, cleared_at FROM violations")}
    assert rows[first.id]["cleared_at"] == point.ts + timedelta(seconds=30)
    assert rows[second.id]["cleared_at"] == point.ts + timedelta(seconds=40)
    assert await pool.fetchval("SELECT count(*) FROM violation_clears") == 2


async def test_retention_deletes_only_old_rows(pool: asyncpg.Pool, database_url: str) -> None:
    async with pool.acquire() as conn:
        # Both stored now; the second's time two days on, so it is younger than the retention
        # when the first, kept for the retention from when it was stored, goes.
        await store_telemetry(
            conn, [telemetry(0, ts=T0 - timedelta(days=40)), telemetry(1, ts=T0 + timedelta(days=2))]
        )
    settings = ApiSettings(database_url=Secret(database_url), api_key=Secret("x" * 16))
    assert await fold_hours(pool, before=EVERY_HOUR) == 2
    assert await pool.fetchval("SELECT count(*) FROM telemetry_series_hour") == 2
    # A retention after it was stored (its raw row is what makes a redelivery a no-op).
    a_retention_on = datetime.now(UTC) + timedelta(days=settings.retention_telemetry_days, minutes=1)
    deleted = await apply_retention(pool, settings, now=a_retention_on)
    assert deleted["telemetry"] == 1
    assert "violations" not in deleted  # kept forever by default
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == 1
    settings = ApiSettings(
        database_url=Secret(database_url), api_key=Secret("x" * 16), retention_rollup_days=30
    )
    deleted = await apply_retention(pool, settings)
    assert deleted["telemetry_series_hour"] == 1  # the hour rollups with the minutes
    assert await pool.fetchval("SELECT count(*) FROM telemetry_series_hour") == 1


async def test_an_old_event_stays_recorded_for_the_retention_from_when_it_was_stored(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """An event older than the raw telemetry's retention (a backfill, an outbox that waited out an
    outage) keeps its raw row for the retention from when it was stored: the row is what makes a
    redelivery add nothing to the rollups. Deleted at the next hourly run, as before, the
    redelivery counted it twice."""
    settings = ApiSettings(database_url=Secret(database_url), api_key=Secret("x" * 16))
    old = telemetry(0, ts=T0 - timedelta(days=40))
    async with pool.acquire() as conn:
        assert await store_telemetry(conn, [old]) == 1
    counted = "SELECT sum(n) FROM telemetry_minute"
    assert await pool.fetchval(counted) == 1
    an_hour_on = datetime.now(UTC) + timedelta(hours=1)
    deleted = await apply_retention(pool, settings, now=an_hour_on)
    assert deleted["telemetry"] == 0
    async with pool.acquire() as conn:  # redelivered (the ack was lost) or sent again
        assert await store_telemetry(conn, [old]) == 0
    assert await pool.fetchval(counted) == 1
    a_retention_on = datetime.now(UTC) + timedelta(days=settings.retention_telemetry_days, minutes=1)
    deleted = await apply_retention(pool, settings, now=a_retention_on)
    assert deleted["telemetry"] == 1


async def test_retention_deletes_resolved_incidents_with_their_violations(
    pool: asyncpg.Pool, database_url: str
) -> None:
    old, recent = T0 - timedelta(days=40), T0 - timedelta(days=1)
    rows = [
        ("old-resolved", "resolved", old),
        ("old-open", "open", None),
        ("new-resolved", "resolved", recent),
    ]
    for incident_id, state, resolved_at in rows:
        await pool.execute(
            """INSERT INTO incidents (id, revision, event_id, change, state, title, severity, provider,
                                      models, opened_at, resolved_at, event)
               VALUES ($1, 1, $1, 'opened', $2, 't', 'critical', 'ollama', '{m}', $3, $4, '{}')""",
            incident_id,
            state,
            old,
            resolved_at,
        )
    settings = ApiSettings(database_url=Secret(database_url), api_key=Secret("x" * 16))
    assert "incidents" not in await apply_retention(pool, settings)  # kept forever by default
    settings = dataclasses.replace(settings, retention_violations_days=30)
    deleted = await apply_retention(pool, settings, now=T0)
    assert deleted["incidents"] == 1
    assert {r["id"] for r in await pool.fetch("SELECT id FROM incidents")} == {"old-open", "new-resolved"}


async def test_retention_deletes_old_rebaselines_but_each_charts_latest(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """Re-baselines go once no chart can show their time (the longer of the telemetry and rollup
    retentions); each chart's latest baseline stays however old, since its chart still draws it."""
    now = T0
    rows = [  # (chart, number, started days ago)
        ("a", 0, 500),
        ("a", 1, 450),  # old, not the latest: deleted
        ("a", 2, 420),  # a's latest, as old as the rest: kept
        ("b", 3, 500),  # old, not the latest: deleted
        ("b", 4, 10),  # recent: kept
        ("b", 5, 1),
        ("c", 7, 900),  # c's only row: kept
    ]
    for chart, number, days in rows:
        started = now - timedelta(days=days)
        await pool.execute(
            INSERT_BASELINE,
            chart,
            f"{chart}-{number}",
            number,
            "ollama",
            "m",
            "",
            "p",
            "latency_ms",
            100,
            started,
            started + timedelta(hours=1),
            "engine",
            "",
        )
        await pool.execute(
            "UPDATE baseline_history SET seen_at = $1 WHERE chart_key = $2 AND number = $3",
            started + timedelta(hours=1),
            chart,
            number,
        )
    settings = ApiSettings(database_url=Secret(database_url), api_key=Secret("x" * 16))

    async def left() -> set[tuple[str, int]]:
        return {(r["chart_key"], r["number"]) for r in await pool.fetch("SELECT * FROM baseline_history")}

    everything = await left()
    # Rollups kept forever: any re-baseline may still be on a chart.
    forever = dataclasses.replace(settings, retention_rollup_days=0)
    assert "baseline_history" not in await apply_retention(pool, forever, now=now)
    assert await left() == everything
    deleted = await apply_retention(pool, settings, now=now)  # 30 days raw, 400 days of rollups
    assert deleted["baseline_history"] == 3
    assert await left() == {("a", 2), ("b", 4), ("b", 5), ("c", 7)}
    # Shorter retention: b's re-baseline of 10 days ago goes, its latest (1 day ago) stays.
    short = dataclasses.replace(settings, retention_telemetry_days=2, retention_rollup_days=5)
    assert (await apply_retention(pool, short, now=now))["baseline_history"] == 1
    assert await left() == {("a", 2), ("b", 5), ("c", 7)}
    assert (await apply_retention(pool, short, now=now))["baseline_history"] == 0


async def test_persister_over_jetstream(pool: asyncpg.Pool, js: JetStreamContext) -> None:
    """Redelivery stores once; a malformed message is dead-lettered with its reason; nothing stops."""
    publisher = Publisher(js)
    persister = Persister(pool=pool, js=js, publisher=publisher, batch_size=50)
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:
        ev = telemetry(1)
        subject = subjects.telemetry(ev.provider, ev.model)
        payload = codec.encode(ev)
        # Two different message ids get past JetStream's de-duplication: the store must dedupe.
        await publisher.publish_raw(subject, payload, msg_id="copy-1")
        await publisher.publish_raw(subject, payload, msg_id="copy-2")
        await publisher.publish_raw(subject, b'{"type": "telemetry.v1", "latency_ms": "fast"}', msg_id="bad")
        later = telemetry(2)
        await publisher.publish(subject, later)
        v = violation(later)
        await publisher.publish(subjects.violations(v.provider, v.model, v.rule), v)

        async def stored() -> bool:
            n = await pool.fetchval("SELECT count(*) FROM telemetry")
            dead = await pool.fetchval("SELECT count(*) FROM dead_letters")
            vs = await pool.fetchval("SELECT count(*) FROM violations")
            return bool(n == 2 and dead == 1 and vs == 1)

        await eventually(stored)
        reason = await pool.fetchval("SELECT reason FROM dead_letters")
        assert "malformed" in reason
        subject_dl = await pool.fetchval("SELECT subject FROM dead_letters")
        # The subject as stored: the telemetry stream appends the model's partition.
        k = telemetry_partition(ev.provider, ev.model, DEFAULT_TELEMETRY_PARTITIONS)
        assert subject_dl == f"{subject}.{k}"
        assert persister.telemetry.dead_lettered == 1
        assert await pool.fetchval("SELECT sum(n) FROM telemetry_minute") == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_consumer_lag_is_sampled_per_consumer(pool: asyncpg.Pool, js: JetStreamContext) -> None:
    """/metrics of the API shows each persister consumer's lag, read from the server: it rises
    while Postgres holds the persister's writes and falls to zero once they go through."""
    metrics = ApiMetrics()
    publisher = Publisher(js)
    persister = Persister(pool=pool, js=js, publisher=publisher, metrics=metrics, lag_sample_s=0.1)
    events = [telemetry(i, id=f"lag-{i}") for i in range(20)]

    def lag(consumer: str) -> float | None:
        labels = {"consumer": consumer}
        pending = metrics.registry.get_sample_value("llmscope_consumer_pending_messages", labels)
        acking = metrics.registry.get_sample_value("llmscope_consumer_ack_pending_messages", labels)
        return None if pending is None or acking is None else pending + acking

    stop = asyncio.Event()
    locker = await pool.acquire()
    lock = locker.transaction()
    await lock.start()
    await locker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")  # the writes wait here
    task = asyncio.create_task(persister.run(stop))
    try:
        for ev in events:
            await publisher.publish(subjects.telemetry(ev.provider, ev.model), ev)
        await eventually(lambda: lag("api-persister-telemetry") == 20, what="the lag of 20 held events")
        for consumer in ("violations", "deadletter", "incidents"):
            assert lag(f"api-persister-{consumer}") == 0
        await lock.rollback()
        await eventually(lambda: lag("api-persister-telemetry") == 0, what="the lag gone once stored")
        assert await pool.fetchval("SELECT count(*) FROM telemetry WHERE id LIKE 'lag-%'") == 20
        assert "llmscope_consumer_pending_messages" in metrics.render().decode()
    finally:
        with contextlib.suppress(asyncpg.InterfaceError):  # rolled back already
            await lock.rollback()
        await pool.release(locker)
        stop.set()
        await asyncio.wait_for(task, 20)


def test_tune_gc_raises_only_the_youngest_generations_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 7, 9)
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNGEST_THRESHOLD, 7, 9)
        tune_gc()  # the API and a standalone persister may both call it
        assert gc.get_threshold() == (GC_YOUNGEST_THRESHOLD, 7, 9)
    finally:
        gc.set_threshold(*before)


async def test_a_backlog_stored_two_batches_at_once_counts_each_event_once(
    pool: asyncpg.Pool, js: JetStreamContext
) -> None:
    """Full batches are stored two at once (one COPYs while the other commits): with events
    published twice under other message ids into the batch before, still in its transaction,
    every event is stored once and the rollups, series and models are those of one plain write."""
    events = _mixed_batch(6 * COPY_MIN_ROWS)
    async with pool.acquire() as conn:
        await store_telemetry(conn, events)
    expected = await _aggregates(pool)
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE telemetry, {', '.join(_AGGREGATE_TABLES)}")
    publisher = Publisher(js)
    sends: list[tuple[str, bytes, str]] = []
    for i, ev in enumerate(events):
        sends.append((subjects.telemetry(ev.provider, ev.model), codec.encode(ev), ev.id))
        if i >= COPY_MIN_ROWS + 10 and i % 7 == 0:  # again, one batch later: a redelivery's twin
            twin = events[i - COPY_MIN_ROWS - 10]
            sends.append((subjects.telemetry(twin.provider, twin.model), codec.encode(twin), f"{twin.id}-2"))
    sends.insert(300, (subjects.telemetry("ollama", "x"), b'{"type": "telemetry.v1"}', "bad"))
    for start in range(0, len(sends), 500):
        await publisher.publish_many_raw(sends[start : start + 500])
    persister = Persister(pool=pool, js=js, publisher=publisher, batch_size=COPY_MIN_ROWS)
    assert persister.telemetry._opts.concurrent == 2
    in_store = 0
    most_in_store = 0
    on_telemetry = persister.on_telemetry

    async def counting(batch: Any) -> Any:
        nonlocal in_store, most_in_store
        in_store += 1
        most_in_store = max(most_in_store, in_store)
        try:
            return await on_telemetry(batch)
        finally:
            in_store -= 1

    persister.telemetry._handler = counting
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:

        async def drained() -> bool:
            try:
                info = await js.consumer_info(subjects.STREAM_TELEMETRY, "api-persister-telemetry")
            except NotFoundError:  # not made yet
                return False
            return (info.num_ack_pending or 0) == 0 and (info.num_pending or 0) == 0

        await eventually(drained, within=60, what="the backlog stored and acked")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await pool.fetchval("SELECT count(*) FROM telemetry") == len(events)
    assert _same_aggregates(await _aggregates(pool), expected)
    assert persister.telemetry.dead_lettered == 1
    assert most_in_store == 2


async def test_the_quiet_streams_pull_requests_stay_open_longer(
    pool: asyncpg.Pool, js: JetStreamContext, nc: NATS
) -> None:
    """An idle consumer's open request expires and is sent again: a request, a status and a
    wake-up each time. The violation, dead-letter and incident streams are quiet most of the
    time, so their requests ask for a long expiry; telemetry's stays short."""
    expiries: dict[str, float] = {}
    asked = asyncio.Event()

    async def on_request(msg: Msg) -> None:
        stream, durable = msg.subject.split(".")[5:7]
        if not durable.startswith("api-persister-"):
            return
        expiries[stream] = json.loads(msg.data)["expires"] / 1e9
        if len(expiries) == 4:
            asked.set()

    await nc.subscribe("$JS.API.CONSUMER.MSG.NEXT.*.*", cb=on_request)
    await nc.flush()
    persister = Persister(pool=pool, js=js, publisher=Publisher(js))
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:
        await asyncio.wait_for(asked.wait(), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert expiries[subjects.STREAM_TELEMETRY] == 1.0
    for stream in (subjects.STREAM_VIOLATIONS, subjects.STREAM_DEADLETTER, subjects.STREAM_INCIDENTS):
        assert expiries[stream] >= 5.0, expiries


async def test_a_batch_of_opens_is_one_statement_and_all_or_nothing(pool: asyncpg.Pool) -> None:
    """No BEGIN and COMMIT around a batch of opens (a round trip and a statement each): its one
    executemany is atomic, so an event Postgres refuses leaves none of the batch stored, and the
    persister then writes them one by one (only the guilty one dead-lettered)."""
    point = telemetry(1)
    first, second = violation(point), violation(point, rule="R2")
    statements: list[str] = []
    async with pool.acquire() as conn:
        conn.add_query_logger(lambda q: statements.append(q.query.split()[0]))
        await store_violations(conn, [first, second])
        await asyncio.sleep(0)  # asyncpg calls its query loggers soon after, not inline
        assert statements == ["INSERT"]
        bad = violation(point, rule="R3", id="bad\x00id")  # Postgres text cannot hold a NUL
        with pytest.raises(Exception) as refused:
            await store_violations(conn, [violation(point, rule="R4"), bad])
        assert refused_for_its_data(refused.value)
    stored = {r["id"] for r in await pool.fetch("SELECT id FROM violations")}
    assert stored == {first.id, second.id}  # nothing of the refused batch
