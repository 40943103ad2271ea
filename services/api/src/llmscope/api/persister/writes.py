"""One batch of each kind into Postgres, in one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import operator
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from llmscope.api.persister.rollups import batch_aggregates, one_rollup
from llmscope.api.persister.sql import (
    APPLY_CLEAR,
    CREATE_TELEMETRY_IN,
    INSERT_CLEAR,
    INSERT_DEAD_LETTER,
    INSERT_NEW_TELEMETRY,
    INSERT_VIOLATION,
    STORE_NEW_TELEMETRY_ARRAYS,
    STORE_ONE_TELEMETRY,
    STORE_TELEMETRY_ARRAYS,
    TELEMETRY_COLUMNS,
    TELEMETRY_KEY,
    UPSERT_AGGREGATES,
)
from llmscope.proto.deadletter import DeadLetterEvent
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.proto.violation import ViolationEvent

Conn = asyncpg.Connection | PoolConnectionProxy

COPY_MIN_ROWS = 128
"""A batch this large goes through COPY into a temporary table; a smaller one is sent as one array
parameter of records (a statement of its own: one round trip, ~1.5 ms for one event)."""


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
_event_id = operator.attrgetter("id")


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
            one: int = await conn.fetchval(STORE_ONE_TELEMETRY, *telemetry_record(ev), *one_rollup(ev))
        return one
    if len(events) < copy_min_rows:
        # One statement is its own transaction: no BEGIN and COMMIT round trips.
        # One parameter: the events' records, an array of telemetry_row.
        records = [telemetry_record(ev) for ev in events]
        async with held:
            if conn.is_in_transaction():
                # A failed statement would abort the caller's transaction: arbitrate instead.
                inserted: int = await conn.fetchval(STORE_TELEMETRY_ARRAYS, records)
                return inserted
            try:
                # Nearly every batch is new: no conflict arbitration (STORE_NEW_TELEMETRY_ARRAYS).
                inserted = await conn.fetchval(STORE_NEW_TELEMETRY_ARRAYS, records)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != TELEMETRY_KEY:
                    raise
                # A redelivery: that statement stored nothing; this one stores the rows not
                # there yet and folds only those into the rollups.
                inserted = await conn.fetchval(STORE_TELEMETRY_ARRAYS, records)
        return inserted
    unique: Sequence[TelemetryEvent] = events
    if len(set(map(_event_id, events))) < len(events):  # one C pass for the usual batch of distinct ids
        firsts: dict[str, TelemetryEvent] = {}
        for ev in events:
            firsts.setdefault(ev.id, ev)  # a duplicate inside the batch is the same event
        unique = list(firsts.values())  # batch order: of two equal times, the later is a model's latest
    # Rows go in id order (code point order, as _ID_ORDER): two batches stored at once that each
    # hold twins of the other's events (a redelivery) lock the ids they share in one order, so one
    # waits for the other's COMMIT instead of both waiting for each other (a deadlock, aborted).
    # The attrgetter itself, not telemetry_record around it: no Python call per row.
    records = sorted(map(_telemetry_values, unique), key=_record_id)
    try:
        # The common case, no event stored yet: COPY straight into the table (as fast as
        # Postgres takes rows), the batch's aggregates computed here.
        # The stack is left after the transaction: ``serial`` is released once COMMIT is done.
        async with contextlib.AsyncExitStack() as until_committed, conn.transaction():
            await conn.copy_records_to_table("telemetry", records=records, columns=TELEMETRY_COLUMNS)
            aggregates = batch_aggregates(unique)
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
        aggregates = batch_aggregates(unique, new)
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
    """Store opens as episodes and apply clears to them, in one transaction; returns events seen.

    A batch of opens alone (nearly every batch: a violation's clear comes much later) is one
    ``executemany``, atomic by itself (asyncpg pipelines its statements in one implicit
    transaction): no BEGIN and COMMIT round trips, each a statement for Postgres too."""
    opens = [ev for ev in events if ev.state == "open"]
    clears = [ev for ev in events if ev.state == "cleared"]
    if opens and not clears and not conn.is_in_transaction():
        await conn.executemany(INSERT_VIOLATION, [violation_record(ev) for ev in opens])
        return len(events)
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
    records = [
        (e.id, e.ts, e.source, e.subject, e.reason, e.payload, e.payload_encoding, e.stream_seq)
        for e in events
    ]
    if conn.is_in_transaction():  # a savepoint: a refusal leaves the caller's transaction usable
        async with conn.transaction():
            await conn.executemany(INSERT_DEAD_LETTER, records)
    else:
        await conn.executemany(INSERT_DEAD_LETTER, records)  # atomic by itself (store_violations)
    return len(events)
