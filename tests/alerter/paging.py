"""An alerter paging a local webhook, with the API's side publishing people's actions: the set-up
that hand-resolution and page-again tests share (``tests/alerter/test_hand_resolve.py``,
``tests/alerter/test_repage.py``), started and torn down in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import JetStreamContext

from llmscope.alerter.config import Timings
from llmscope.proto.alert import NotificationEvent
from llmscope.proto.incident import IncidentEvent
from tests.alerter.api_side import ApiSide, api_side
from tests.alerter.factories import HttpSink, webhook_sink
from tests.alerter.flushes import TIMINGS, all_flushed_after, nothing_in_flight
from tests.alerter.harness import Running, eventually, start_alerter


@dataclass
class Paging:
    """The running alerter (``run``, replaced by :meth:`restart`), what its webhook got, in
    arrival order, and the API's side."""

    database_url: str
    js: JetStreamContext
    run: Running
    got: list[NotificationEvent]
    sink: HttpSink
    api: ApiSide
    env: dict[str, str]
    timings: Timings

    async def start(self, **options: Any) -> Running:
        """Another alerter on the same database and webhook (a replica, or the next one)."""
        return await start_alerter(self.database_url, self.js, self.env, timings=self.timings, **options)

    async def restart(self, **options: Any) -> Running:
        """Stop the running alerter and start the next (``options`` as ``start_alerter``'s)."""
        await self.run.close()
        self.run = await self.start(**options)
        return self.run

    async def quiet(self, run: Running | None = None) -> None:
        """Whatever the alerter would send now is a row already, and every row has been sent."""
        await quiet(run or self.run, self.timings)


async def quiet(run: Running, timings: Timings = TIMINGS) -> None:
    """Every active group flushed since now (what it would send is a row) and nothing in flight."""
    moment = run.store.clock()
    await eventually(lambda: all_flushed_after(run.pool, moment, timings.group_interval), what="a flush")
    await eventually(lambda: nothing_in_flight(run.pool), what="nothing in flight")


async def incident_events(run: Running, incident_id: str) -> list[IncidentEvent]:
    """The incident's events on the alerter's outbox, oldest first."""
    rows = await run.pool.fetch(
        "SELECT payload FROM alerter_outbox WHERE msg_id LIKE $1 || ':%' ORDER BY id", incident_id
    )
    return [msgspec.json.decode(bytes(r["payload"]), type=IncidentEvent) for r in rows]


@contextlib.asynccontextmanager
async def paging(
    database_url: str, js: JetStreamContext, *, timings: Timings = TIMINGS, **options: Any
) -> AsyncIterator[Paging]:
    """An alerter (``options`` as ``start_alerter``'s) paging a webhook; all of it stopped after."""
    api = await api_side(js)
    sink, got = await webhook_sink()
    env = {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"}
    p: Paging | None = None
    try:
        run = await start_alerter(database_url, js, env, timings=timings, **options)
        p = Paging(database_url, js, run, got, sink, api, env, timings)
        yield p
    finally:
        if p is not None:
            await p.run.close()
        await sink.stop()
        await api.close()
