"""Where a probe event's time goes in the persister, stage by stage (``persister_counts.py --stages``).

Every stamp is ``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for this process and the
probers' feed). The persister's functions are wrapped by name, so an older checkout is measured
the same way: the standing pull's ``_take`` (a delivery arrived on the inbox) and ``fetch`` (a
batch handed over: the linger and the wait behind the batch before it), the consumer's handler
(decoded), ``store_telemetry`` as the handler calls it (a kept connection taken, then the
statement or transaction until its COMMIT answered), and ``inbox.ack_many`` (the acks written).
The row's NOTIFY, delivered at commit, is the bench's listener's (``stack_bench.Stored``).

Beside them, in the same process: the event loop's lag (a 1 ms sleep's overshoot), the garbage
collector's pauses (``gc.callbacks``) and how many of them fell inside a batch's store, the run
queue (``procs_running`` in /proc/stat) and the load average; and from Postgres, the WAL's
flushes (``pg_stat_io``'s WAL rows with ``track_wal_io_timing`` on: fsyncs and their mean time).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from llmscope.bus import consumer, inbox

now = time.perf_counter


class Stages:
    """Per-delivery stamps, keyed by the delivery's ack subject until the handler names its event."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.fetched: dict[str, float] = {}
        self.acked: dict[str, float] = {}
        self.handler: dict[str, float] = {}  # event id -> handler entered (decoded)
        self.store_start: dict[str, float] = {}
        self.store_end: dict[str, float] = {}
        self.reply_of: dict[str, str] = {}  # event id -> ack subject
        self.batch_of: dict[str, int] = {}  # event id -> its batch's size
        self.stores: list[tuple[float, float]] = []
        self.gc_pauses: list[tuple[float, float, int]] = []
        self.lags: list[float] = []
        self.running: list[int] = []
        self._gc_at = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def install(self, persister_obj: Any) -> None:
        stages = self
        pull = consumer.StandingPull
        take, fetch = pull._take, pull.fetch

        def timed_take(puller: Any, msg: Any) -> None:
            if not inbox.status_of(msg):
                stages.arrived[msg.reply] = now()
            take(puller, msg)

        async def timed_fetch(puller: Any, batch: int, expires: float, fill_wait: float = 0.0) -> Any:
            msgs = await fetch(puller, batch, expires, fill_wait)
            t = now()
            for msg in msgs:
                stages.fetched[msg.reply] = t
            return msgs

        pull._take = timed_take  # type: ignore[method-assign,assignment]
        pull.fetch = timed_fetch  # type: ignore[method-assign,assignment]

        ack_many = inbox.ack_many

        async def timed_acks(nc: Any, msgs: Sequence[Any]) -> None:
            await ack_many(nc, msgs)
            t = now()
            for msg in msgs:
                stages.acked[msg.reply] = t

        inbox.ack_many = timed_acks

        telemetry = persister_obj.telemetry
        handler = telemetry._handler

        async def timed_handler(batch: Sequence[Any]) -> Any:
            t = now()
            for d in batch:
                stages.handler[d.event.id] = t
                stages.reply_of[d.event.id] = d.msg.reply
                stages.batch_of[d.event.id] = len(batch)
            return await handler(batch)

        telemetry._handler = timed_handler
        # store_telemetry as the handler's module calls it (a module, or a package's consumers).
        namespace = type(persister_obj).on_telemetry.__globals__
        store = namespace["store_telemetry"]

        async def timed_store(conn: Any, events: Sequence[Any], **kw: Any) -> int:
            t0 = now()
            try:
                return int(await store(conn, events, **kw))
            finally:
                t1 = now()
                stages.stores.append((t0, t1))
                for ev in events:
                    stages.store_start[ev.id] = t0
                    stages.store_end[ev.id] = t1

        namespace["store_telemetry"] = timed_store
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_at = now()
        else:
            self.gc_pauses.append((self._gc_at, now() - self._gc_at, info["generation"]))

    def start_samplers(self) -> None:
        self._tasks = [asyncio.create_task(self._lag()), asyncio.create_task(self._run_queue())]

    async def _lag(self) -> None:
        while not self._stop.is_set():
            t = now()
            await asyncio.sleep(0.001)
            self.lags.append(now() - t - 0.001)

    @staticmethod
    def _procs_running() -> int:
        # /proc is served from memory: no disk wait on the event loop.
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                return int(line.split()[1]) - 1  # less this reader
        return 0

    async def _run_queue(self) -> None:
        while not self._stop.is_set():
            self.running.append(self._procs_running())
            await asyncio.sleep(0.1)

    def reset(self) -> None:
        for table in (self.arrived, self.fetched, self.acked, self.handler, self.store_start, self.store_end):
            table.clear()
        self.reply_of.clear()
        self.batch_of.clear()
        self.stores.clear()
        self.gc_pauses.clear()
        self.lags.clear()
        self.running.clear()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def commit_times(self, dsn: str, ids: Sequence[str]) -> dict[str, float]:
        """Each row's commit timestamp (``track_commit_timestamp``: taken as the commit record is
        written, before its WAL flush), on this process's clock."""
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                """SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS at
                   FROM telemetry WHERE id = ANY($1::text[])""",
                list(ids),
            )
        finally:
            await conn.close()
        offset = time.time() - now()  # wall clock to perf_counter, one host
        return {r["id"]: r["at"] - offset for r in rows if r["at"] is not None}

    def _commit_parts(self, ids: Sequence[str], c: dict[str, float] | None) -> list[tuple[str, list[float]]]:
        if c is None or not all(i in c for i in ids):
            return []
        return [
            ("  statement sent -> commit record (commit_ts)", [c[i] - self.store_start[i] for i in ids]),
            ("  commit record -> answered (WAL flush, reply)", [self.store_end[i] - c[i] for i in ids]),
        ]

    def report(
        self,
        put: dict[str, float],
        acked: dict[str, float],
        stored_at: dict[str, float],
        percentile: Callable[[Sequence[float], float], float],
        committed: dict[str, float] | None = None,
    ) -> None:
        ids = [
            i
            for i in put
            if i in stored_at and i in self.handler and self.reply_of[i] in self.arrived
            and self.reply_of[i] in self.fetched and self.reply_of[i] in self.acked and i in self.store_end
        ]  # fmt: skip
        if not ids:
            print("  stages: no event seen through every stage")
            return
        r = self.reply_of
        rows: list[tuple[str, list[float]]] = [
            ("put -> at the persister's inbox (store, deliver)", [self.arrived[r[i]] - put[i] for i in ids]),
            (
                "inbox -> batch handed over (linger, queue)",
                [self.fetched[r[i]] - self.arrived[r[i]] for i in ids],
            ),
            ("handed over -> handler (decode)", [self.handler[i] - self.fetched[r[i]] for i in ids]),
            ("handler -> statement sent (connection)", [self.store_start[i] - self.handler[i] for i in ids]),
            ("statement sent -> COMMIT answered", [self.store_end[i] - self.store_start[i] for i in ids]),
            *self._commit_parts(ids, committed),
            ("COMMIT answered -> acks written", [self.acked[r[i]] - self.store_end[i] for i in ids]),
            ("COMMIT answered -> NOTIFY seen (listener)", [stored_at[i] - self.store_end[i] for i in ids]),
            ("published -> stored (NOTIFY)", [stored_at[i] - put[i] for i in ids]),
        ]
        print(f"  stages, {len(ids):,} events, ms                  p50      p90      p99      max")
        for label, values in rows:
            ms = [1000 * v for v in values]
            cells = " ".join(f"{percentile(ms, q):8.2f}" for q in (50, 90, 99)) + f" {max(ms):8.2f}"
            print(f"    {label:<52}{cells}")
        ms = [1000 * (acked[i] - put[i]) for i in ids]
        cells = " ".join(f"{percentile(ms, q):8.2f}" for q in (50, 90, 99)) + f" {max(ms):8.2f}"
        print(f"    {'(beside: put -> acked by JetStream, the prober)':<52}{cells}")
        sizes = [self.batch_of[i] for i in ids]
        print(
            f"    batch size seen by an event: p50 {percentile(sizes, 50):.0f},"
            f" p99 {percentile(sizes, 99):.0f}; stores {len(self.stores):,}"
        )
        # The slowest 1%: what else they had in common.
        total = sorted(ids, key=lambda i: stored_at[i] - put[i])
        tail = total[-max(1, len(total) // 100) :]
        share: dict[str, float] = {}
        for label, values in rows[:-1]:
            if label.startswith("  "):
                continue  # a part of the row above
            by_id = dict(zip(ids, values, strict=True))
            share[label] = sum(by_id[i] for i in tail) / sum(stored_at[i] - put[i] for i in tail)
        parts = [f"{label.split(' -> ')[1].split(' (')[0]} {100 * s:.0f}%" for label, s in share.items()]
        print("    the slowest 1% of events, their time by stage: " + ", ".join(parts))
        lags = [1000 * x for x in self.lags]
        print(
            f"    event loop lag (1 ms sleep's overshoot) ms: p50 {percentile(lags, 50):.2f},"
            f" p99 {percentile(lags, 99):.2f}, max {max(lags, default=0):.2f} ({len(lags):,} samples)"
        )
        pauses = [1000 * d for _, d, _ in self.gc_pauses]
        during = sum(1 for at, _, _ in self.gc_pauses if any(a <= at <= b for a, b in self.stores))
        gens = [g for _, _, g in self.gc_pauses]
        print(
            f"    GC: {len(pauses)} collections (gen 0/1/2: {gens.count(0)}/{gens.count(1)}/{gens.count(2)}),"
            f" {sum(pauses):.1f} ms in all, longest {max(pauses, default=0):.2f} ms, {during} during a store"
        )
        print(
            f"    run queue (procs_running - 1) p50 {percentile(self.running, 50):.0f},"
            f" p99 {percentile(self.running, 99):.0f}, max {max(self.running, default=0)};"
            f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )


class Wal:
    """Postgres's WAL writes and flushes over a phase (PostgreSQL 18's ``pg_stat_io``, object
    ``wal``; times need ``track_wal_io_timing``: :attr:`SETTINGS`, given to the cluster at start)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._before: asyncpg.Record | None = None

    SETTINGS: ClassVar[dict[str, str]] = {
        "track_wal_io_timing": "on",
        "track_io_timing": "on",
        "track_commit_timestamp": "on",
    }

    async def _read(self) -> asyncpg.Record:
        conn = await asyncpg.connect(self._dsn)
        try:
            row: asyncpg.Record | None = await conn.fetchrow(
                """SELECT coalesce(sum(writes), 0)::float8 AS writes,
                          coalesce(sum(write_time), 0)::float8 AS write_time,
                          coalesce(sum(fsyncs), 0)::float8 AS fsyncs,
                          coalesce(sum(fsync_time), 0)::float8 AS fsync_time
                   FROM pg_stat_io WHERE object = 'wal'"""
            )
            assert row is not None
            return row
        finally:
            await conn.close()

    async def mark(self) -> None:
        self._before = await self._read()

    async def report(self, n: int, stores: int) -> None:
        after = await self._read()
        b = self._before
        assert b is not None
        syncs = after["fsyncs"] - b["fsyncs"]
        sync_ms = after["fsync_time"] - b["fsync_time"]
        writes = after["writes"] - b["writes"]
        write_ms = after["write_time"] - b["write_time"]
        print(
            f"    WAL: {syncs / n:.3f} fsyncs per event ({syncs / max(1, stores):.2f} per store),"
            f" mean fsync {sync_ms / max(1, syncs):.2f} ms; writes {writes / n:.3f} per event,"
            f" mean {write_ms / max(1, writes):.3f} ms (pg_stat_io)"
        )
