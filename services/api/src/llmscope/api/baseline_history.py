"""Keeps every baseline the SPC engine freezes, in Postgres (``baseline_history``).

The engine's chart records (its KV bucket) hold one value per chart, so a chart re-baselined twice
shows only its latest baseline there. The API watches the bucket and writes each baseline the
first time it sees it; the charts and the comparison read every re-baseline in their window from
the table. Several API processes may watch at once: a baseline is keyed by chart and id, so the
second write of one is a no-op. What happened while no API process watched is known only as far
as the records still show it (their current baseline, seen at the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE

from llmscope.config.logs import get_logger
from llmscope.proto import subjects
from llmscope.proto.charts import CHART_KEYS, ChartRecord, decode_record, is_chart_key

log = get_logger("llmscope.api.baseline_history")

RETRY_S = 5.0


def baseline_row(record: ChartRecord) -> tuple[object, ...] | None:
    """The ``baseline_history`` row of a record's frozen baseline; None while it collects."""
    b = record.view.baseline if record.view is not None else None
    if b is None:
        return None
    m = record.meta
    return (
        record.key,
        b.id,
        b.number,
        m.provider,
        m.model,
        m.target,
        m.prompt_id,
        m.metric,
        b.n,
        b.started_at,
        b.ended_at,
        b.created_by,
        b.reason,
    )


INSERT = """INSERT INTO baseline_history (chart_key, baseline_id, number, provider, model, target,
                prompt_id, metric, n, started_at, ended_at, created_by, reason)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT (chart_key, baseline_id) DO NOTHING"""


class BaselineHistory:
    """Watches the chart bucket and records each new baseline once."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        bucket: str = subjects.SPC_CHARTS_BUCKET,
        retry_s: float = RETRY_S,
        on_record: Callable[[str], None] | None = None,
    ) -> None:
        self._pool = pool
        # Told the key of every chart record the watch sees (the dashboard's live updates of
        # traffic charts), so the bucket is watched once per process, not once per use.
        self._on_record = on_record
        self.bucket = bucket
        self.retry_s = retry_s
        # The last baseline written per chart: a record changes with every point, its baseline
        # only on a re-baseline, so most updates cost a decode and a comparison.
        self._seen: dict[str, str] = {}
        self.recorded = 0

    async def run(self, nc: NATS, stop: asyncio.Event) -> None:
        """Watch until ``stop``; a missing bucket (no engine yet) or a lost watch is retried."""
        while not stop.is_set():
            try:
                await self._watch(nc, stop)
            except asyncio.CancelledError:
                raise
            except BucketNotFoundError:
                pass  # no engine has run yet
            except Exception as exc:
                log.warning("baseline history watch failed; retrying", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)

    async def _watch(self, nc: NATS, stop: asyncio.Event) -> None:
        kv = await nc.jetstream().key_value(self.bucket)
        # Chart records only: the bucket also holds the engine's leases, renewed several times
        # a second, which this process would otherwise be sent and skip.
        watcher = await kv.watch(CHART_KEYS)
        try:
            while not stop.is_set():
                try:
                    entry = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                except NatsTimeout:
                    continue
                if entry is None or entry.value is None or entry.operation in (KV_DEL, KV_PURGE):
                    continue
                await self.see(entry.key, entry.value)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def see(self, key: str, value: bytes) -> None:
        """Record the baseline of one chart record's value, if it is new."""
        if not is_chart_key(key):
            return
        if self._on_record is not None:
            self._on_record(key)
        try:
            record = decode_record(value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the dashboard logs unreadable records where it reads them
        row = baseline_row(record)
        if row is None or self._seen.get(key) == row[1]:
            return
        await self._pool().execute(INSERT, *row)
        self._seen[key] = str(row[1])
        self.recorded += 1
