"""Merging a host's incidents into its cascade, and holding a second model's stray point.

The rules are pure (merging.py) and tested on crafted signals; the store's merge is tested on
crafted violation sequences against Postgres with a hand-moved clock, and once through a running
alerter on NATS with a webhook sink.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from nats.js import JetStreamContext

from llmscope.alerter.config import Timings
from llmscope.alerter.incidents import OpenSignal
from llmscope.alerter.merging import HOLD_GRACE, HostIncident, Merge, hold_until, plan_merge
from llmscope.alerter.migrate import migrate
from llmscope.alerter.service import Alerter, AlerterOptions
from llmscope.alerter.store import Store
from llmscope.config.env import Env
from llmscope.proto import codec
from llmscope.proto.incident import IncidentEvent
from tests.alerter.factories import LOOPBACK_ALLOWED, T0, HttpSink, cleared, violation
from tests.alerter.harness import eventually, publish, start_alerter

A, B, C = "llama3.1:8b", "qwen2:7b", "mistral:7b"
S = timedelta(seconds=1)

# -- the rules (pure) ---------------------------------------------------------------------------


def test_a_fresh_stray_point_of_a_second_model_merges_nothing_until_sustained() -> None:
    first = HostIncident("i1", T0, T0, False, (OpenSignal(A, "CUSUM", 5, T0),))
    stray = HostIncident("i2", T0 + 2 * S, T0 + 2 * S, False, (OpenSignal(B, "SPIKE", 1, T0 + 2 * S),))
    assert plan_merge([first, stray], T0 + 30 * S, 60, 300) is None
    assert plan_merge([first, stray], T0 + 61 * S, 60, 300) is None  # open 59 s: may still clear
    assert plan_merge([first, stray], T0 + 62 * S, 60, 300) == Merge("i1", ("i2",))
    # order of the rows does not matter; the earliest opened survives
    assert plan_merge([stray, first], T0 + 62 * S, 60, 300) == Merge("i1", ("i2",))


def test_a_sustained_signal_of_the_model_confirms_its_point_at_once() -> None:
    own = HostIncident("i2", T0, T0, False, (OpenSignal(B, "SPIKE", 1, T0),))
    cascade = HostIncident(
        "i3",
        T0 + 5 * S,
        T0 + 5 * S,
        True,
        (OpenSignal(A, "CUSUM", 4, T0 + 3 * S), OpenSignal(B, "CUSUM", 3, T0 + 5 * S)),
    )
    # the cascade survives though opened later: it is the incident the host's story continues in
    assert plan_merge([own, cascade], T0 + 6 * S, 60, 300) == Merge("i3", ("i2",))


def test_one_model_alone_is_no_cascade_and_unconfirmed_points_stay_apart() -> None:
    # two incidents of one model (a replica's twin, another metric): not a host cascade
    b1 = HostIncident("i1", T0, T0, False, (OpenSignal(B, "CUSUM", 4, T0),))
    b2 = HostIncident("i2", T0, T0, False, (OpenSignal(B, "EWMA", 4, T0),))
    assert plan_merge([b1, b2], T0 + S, 60, 300) is None
    # a cleared incident has no open signal: nothing to cascade with
    empty = HostIncident("i0", T0 - 10 * S, T0 - 10 * S, False, ())
    a = HostIncident("i3", T0, T0, False, (OpenSignal(A, "CUSUM", 4, T0),))
    assert plan_merge([empty, a], T0 + S, 60, 300) is None
    # a cascade of A and B; C's fresh point stays its own (held) incident
    c = HostIncident("i4", T0 + 10 * S, T0 + 10 * S, False, (OpenSignal(C, "R1", 1, T0 + 10 * S),))
    assert plan_merge([a, b1, c], T0 + 11 * S, 60, 300) == Merge("i1", ("i3",))
    # the same, but B's incident's last violation long after A's: not one incident's time
    late = HostIncident("i5", T0 + 400 * S, T0 + 400 * S, False, (OpenSignal(B, "CUSUM", 4, T0 + 400 * S),))
    assert plan_merge([a, late], T0 + 401 * S, 60, 300) is None
    assert plan_merge([a, late], T0 + 401 * S, 60, 600) == Merge("i3", ("i5",))


def test_a_lone_point_holds_its_page_only_while_another_model_has_an_incident() -> None:
    spike = OpenSignal(B, "SPIKE", 1, T0)
    shift = [OpenSignal(A, "CUSUM", 6, T0 - 30 * S)]
    held = hold_until(spike, others=shift, confirmed=(A,), sustain_s=60)
    assert held == T0 + 60 * S + HOLD_GRACE
    assert hold_until(spike, others=(), confirmed=(), sustain_s=60) is None  # alone on its host: pages
    assert hold_until(spike, others=shift, confirmed=(A, B), sustain_s=60) is None  # B confirmed
    sustained = OpenSignal(B, "CUSUM", 6, T0)
    assert hold_until(sustained, others=shift, confirmed=(A, B), sustain_s=60) is None


def test_a_shift_next_to_another_models_fresh_point_waits_for_that_point() -> None:
    # B's lone SPIKE paged first (nothing else on the host); A's sustained shift comes 10 s later.
    # If B's point turns out sustained the two are one cascade, merged into B's incident: A's own
    # must not have paged meanwhile. If B's point clears, A's incident pages at the hold's end.
    b_point = [OpenSignal(B, "SPIKE", 1, T0)]
    a_shift = OpenSignal(A, "CUSUM", 6, T0 + 10 * S)
    assert hold_until(a_shift, others=b_point, confirmed=(A,), sustain_s=60) == T0 + 60 * S + HOLD_GRACE
    # a point of its own and another's: until the later of the two would count as sustained
    a_point = OpenSignal(A, "SPIKE", 1, T0 + 10 * S)
    assert hold_until(a_point, others=b_point, confirmed=(), sustain_s=60) == T0 + 70 * S + HOLD_GRACE


def test_the_incident_already_told_of_survives() -> None:
    told = HostIncident(
        "i9", T0 + 5 * S, T0 + 5 * S, False, (OpenSignal(B, "CUSUM", 4, T0 + 5 * S),), told=True
    )
    held = HostIncident("i1", T0, T0, False, (OpenSignal(A, "CUSUM", 4, T0),))
    assert plan_merge([held, told], T0 + 6 * S, 60, 300) == Merge("i9", ("i1",))


# -- the store: crafted violation sequences, a hand-moved clock ---------------------------------


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Setup:
    pool: asyncpg.Pool
    store: Store
    alerter: Alerter
    clock: Clock
    sink: HttpSink

    async def ingest(self, *events: Any) -> None:
        runtime = await self.alerter.runtime()
        await self.store.ingest(list(events), runtime.routes, runtime.allowed_rules)

    async def dispatch(self, at: datetime) -> None:
        self.clock.now = at
        await self.alerter.dispatch_once()
        await self.alerter.drain_deliveries(grace=10)

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.sink.requests]

    async def incident_of(self, episode_id: str) -> asyncpg.Record:
        row = await self.pool.fetchrow(
            "SELECT i.* FROM alerter_incidents i JOIN alerter_incident_episodes e ON e.incident_id = i.id"
            " WHERE e.episode_id = $1",
            episode_id,
        )
        assert row is not None
        return row


@pytest.fixture
async def setup(database_url: str) -> AsyncIterator[Setup]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    sink = HttpSink()
    url = await sink.start()
    clock = Clock(T0)
    store = Store(pool, instance="a", clock=clock, incident_window=300, sustain_after=60)
    session = aiohttp.ClientSession()
    alerter = Alerter(
        store,
        env=Env({**LOOPBACK_ALLOWED, "LLMSCOPE_WEBHOOK_URL": url + "/hook"}),
        session=session,
        publisher=None,
        options=AlerterOptions(
            settings_refresh_s=0, timings=Timings(group_wait=30, group_interval=300, repeat_interval=3600)
        ),
    )
    try:
        yield Setup(pool, store, alerter, clock, sink)
    finally:
        await session.close()
        await sink.stop()
        await pool.close()


async def test_a_second_models_lone_spike_is_held_then_merged_into_the_cascade(setup: Setup) -> None:
    a = violation(1, model=A, host="gpu-5", rule="CUSUM", at=T0)
    b = violation(2, model=B, host="gpu-5", rule="SPIKE", at=T0 + 2 * S)
    await setup.ingest(a)
    setup.clock.now = T0 + 2 * S
    await setup.ingest(b)
    first, own = await setup.incident_of(a.episode_id), await setup.incident_of(b.episode_id)
    assert first["id"] != own["id"]
    # the stray point turned nothing into a cascade, and holds its page past the sustain time
    assert (first["cascade"], list(first["models"])) == (False, [A])
    assert own["held_until"] == T0 + 62 * S + HOLD_GRACE
    flush = await setup.pool.fetchval(
        "SELECT next_flush_at FROM alerter_groups WHERE labels::text LIKE '%' || $1 || '%'", own["id"]
    )
    assert flush == own["held_until"]
    # The second model's incident already has a Slack thread and a ticket row (as if it had been
    # told): both carry on with the cascade.
    await setup.pool.execute(
        "INSERT INTO alerter_threads (channel, thread_key, ref) VALUES ('slack', $1, '1.5')",
        f"incident:{own['id']}",
    )
    await setup.pool.execute(
        "INSERT INTO alerter_incident_tickets (incident_id, tracker, marker, ticket_key, state, next_try_at,"
        " created_at, updated_at) VALUES ($1, 'github', 'm', '12', 'open', $2, $2, $2)",
        own["id"],
        T0,
    )

    await setup.dispatch(T0 + 31 * S)  # the first model's group pages, alone
    assert [(m["incident_id"], m["cascade_models"]) for m in setup.messages()] == [(first["id"], [])]
    await setup.dispatch(T0 + 61 * S)  # the point is open 59 s: not yet sustained
    assert (await setup.incident_of(b.episode_id))["id"] == own["id"]

    await setup.dispatch(T0 + 62 * S)  # sustained: merged, before its held flush
    cascade = await setup.incident_of(b.episode_id)
    assert cascade["id"] == first["id"]
    assert (cascade["cascade"], sorted(cascade["models"])) == (True, [A, B])
    assert cascade["title"].startswith("Cascade on gpu-5: 2 models degraded")
    merged = await setup.pool.fetchrow("SELECT * FROM alerter_incidents WHERE id = $1", own["id"])
    assert merged is not None
    assert (merged["state"], merged["merged_into"]) == ("resolved", first["id"])
    assert first["id"] in merged["resolved_note"]
    assert (
        await setup.pool.fetchval(
            "SELECT ref FROM alerter_threads WHERE thread_key = $1", f"incident:{first['id']}"
        )
        == "1.5"
    )
    assert (
        await setup.pool.fetchval("SELECT incident_id FROM alerter_incident_tickets WHERE ticket_key = '12'")
        == first["id"]
    )
    # the incident events: the absorbed one resolved naming the survivor; the survivor a cascade
    events = [
        codec.decode_as(bytes(r["payload"]), IncidentEvent)
        for r in await setup.pool.fetch("SELECT payload FROM alerter_outbox ORDER BY id")
    ]
    gone = [e for e in events if e.incident_id == own["id"]][-1]
    assert (gone.state, gone.merged_into, gone.episode_ids) == ("resolved", first["id"], ())
    now = [e for e in events if e.incident_id == first["id"]][-1]
    assert now.cascade
    assert set(now.episode_ids) == {a.episode_id, b.episode_id}
    assert now.ticket is not None
    assert now.ticket.key == "12"

    # A later incident finds the cascade among similar past ones, never the incident merged away
    # (it was resolved by no one; the same goes for the stricter resemblance link).
    similar = dict(await setup.store.similar_incidents("inc-later", merged["search_text"], T0 + 900 * S))
    assert first["id"] in similar
    assert own["id"] not in similar

    await setup.dispatch(T0 + 70 * S)  # the held flush time: the emptied group tells nobody
    assert len(setup.messages()) == 1
    await setup.dispatch(T0 + 331 * S)  # the survivor's group tells the news in its own thread
    update = setup.messages()[-1]
    assert (update["incident_id"], sorted(update["cascade_models"])) == (first["id"], [A, B])
    assert {m["incident_id"] for m in setup.messages()} == {first["id"]}
    assert len(setup.messages()) == 2
    # both clear: the cascade resolves, the merged one stays as it was
    await setup.ingest(cleared(a, T0 + 400 * S), cleared(b, T0 + 400 * S))
    assert (await setup.incident_of(a.episode_id))["state"] == "resolved"
    await setup.dispatch(T0 + 640 * S)
    assert [m["incident_id"] for m in setup.messages()] == [first["id"]] * 3


async def test_a_shift_after_another_models_paged_point_waits_and_merges_into_it(setup: Setup) -> None:
    b = violation(1, model=B, host="gpu-3", rule="SPIKE", at=T0)
    a = violation(2, model=A, host="gpu-3", rule="CUSUM", at=T0 + 10 * S)
    await setup.ingest(b)  # alone on its host: its incident pages as usual
    setup.clock.now = T0 + 10 * S
    await setup.ingest(a)  # sustained, but next to B's fresh point: held until that is judged
    own_b, own_a = await setup.incident_of(b.episode_id), await setup.incident_of(a.episode_id)
    assert own_a["id"] != own_b["id"]
    assert own_b["held_until"] is None
    assert own_a["held_until"] == T0 + 60 * S + HOLD_GRACE
    await setup.dispatch(T0 + 31 * S)
    assert [(m["incident_id"], m["cascade_models"]) for m in setup.messages()] == [(own_b["id"], [])]
    await setup.dispatch(T0 + 61 * S)  # B's point is sustained: one cascade, in B's incident
    cascade = await setup.incident_of(a.episode_id)
    assert cascade["id"] == own_b["id"]
    assert (cascade["cascade"], sorted(cascade["models"])) == (True, [A, B])
    await setup.dispatch(T0 + 70 * S)
    await setup.dispatch(T0 + 331 * S)
    assert [(m["incident_id"], sorted(m["cascade_models"])) for m in setup.messages()] == [
        (own_b["id"], []),
        (own_b["id"], [A, B]),
    ]


async def test_the_incident_whose_group_already_notified_is_the_survivor(setup: Setup) -> None:
    a = violation(1, model=A, host="gpu-2", rule="CUSUM", at=T0)
    b = violation(2, model=B, host="gpu-2", rule="SPIKE", at=T0 + 2 * S)
    await setup.ingest(a)
    setup.clock.now = T0 + 2 * S
    await setup.ingest(b)
    own_b = await setup.incident_of(b.episode_id)
    # As if B's held group had paged (its hold cut short): a notification row in its group.
    group = await setup.pool.fetchrow(
        "SELECT id, group_key FROM alerter_groups WHERE labels::text LIKE '%' || $1 || '%'", own_b["id"]
    )
    assert group is not None
    await setup.pool.execute(
        "INSERT INTO alerter_notifications (id, group_id, route, group_key, channel, channel_kind, seq,"
        " reason, status, firing, resolved, announce_resolved, created_at, updated_at)"
        " VALUES ('n1', $1, 'default', $2, 'webhook', 'webhook', 1, 'first', 'sent', $3, '{}', '{}', $4, $4)",
        group["id"],
        group["group_key"],
        [b.episode_id],
        T0 + 3 * S,
    )
    # A's own group never flushed (the merge pass runs before the flush in the same tick).
    await setup.dispatch(T0 + 62 * S)
    assert (await setup.incident_of(a.episode_id))["id"] == own_b["id"]
    assert (
        await setup.pool.fetchval(
            "SELECT merged_into FROM alerter_incidents WHERE id = $1", f"inc-{a.episode_id}"
        )
        == own_b["id"]
    )
    assert setup.messages() == []  # A's group was emptied before its first flush


async def test_a_stray_spike_that_clears_in_time_pages_nobody_and_makes_no_cascade(setup: Setup) -> None:
    a = violation(1, model=A, host="gpu-6", rule="CUSUM", at=T0)
    b = violation(2, model=B, host="gpu-6", rule="SPIKE", at=T0 + 2 * S)
    await setup.ingest(a)
    setup.clock.now = T0 + 2 * S
    await setup.ingest(b)
    # still open when its group would first flush without the hold, cleared before sustained
    await setup.dispatch(T0 + 33 * S)
    setup.clock.now = T0 + 45 * S
    await setup.ingest(cleared(b, T0 + 45 * S))
    for at in (62, 70, 100):
        await setup.dispatch(T0 + at * S)
    first, own = await setup.incident_of(a.episode_id), await setup.incident_of(b.episode_id)
    assert (first["cascade"], list(first["models"]), first["state"]) == (False, [A], "open")
    assert (own["state"], own["merged_into"]) == ("resolved", None)
    assert [(m["incident_id"], m["cascade_models"]) for m in setup.messages()] == [(first["id"], [])]


async def test_a_second_models_spike_with_no_other_incident_on_the_host_pages_at_once(setup: Setup) -> None:
    b = violation(2, model=B, host="gpu-8", rule="SPIKE", at=T0)
    other_host = violation(1, model=A, host="gpu-9", rule="CUSUM", at=T0)
    await setup.ingest(other_host, b)
    own = await setup.incident_of(b.episode_id)
    assert own["held_until"] is None
    await setup.dispatch(T0 + 31 * S)
    assert sorted(m["incident_id"] for m in setup.messages()) == sorted(
        [own["id"], (await setup.incident_of(other_host.episode_id))["id"]]
    )


# -- through a running alerter on NATS ----------------------------------------------------------


async def test_a_spike_and_a_shift_on_one_host_page_once_naming_both_models(
    database_url: str, js: JetStreamContext
) -> None:
    sink = HttpSink()
    url = await sink.start()
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": url + "/hook"},
        timings=Timings(group_wait=6, group_interval=0.5, repeat_interval=3600),
    )
    run.store.sustain_after = 1.0
    try:
        now = datetime.now(UTC)
        a = violation(1, model=A, host="gpu-4", rule="CUSUM", at=now)
        b = violation(2, model=B, host="gpu-4", rule="SPIKE", at=now + timedelta(milliseconds=50))
        await publish(js, a, b)

        async def merged() -> bool:
            n = await run.pool.fetchval(
                "SELECT count(*) FROM alerter_incidents WHERE merged_into IS NOT NULL"
            )
            return bool(n)

        await eventually(merged, within=20, what="the second model's incident merged into the cascade")
        survivor = await run.pool.fetchval(
            "SELECT incident_id FROM alerter_incident_episodes WHERE episode_id = $1", b.episode_id
        )

        def told_both() -> bool:
            return any(sorted(json.loads(body)["cascade_models"]) == [A, B] for _, body, _ in sink.requests)

        await eventually(told_both, within=20, what="a message naming both models")
        await publish(js, cleared(a), cleared(b))

        def resolved() -> bool:
            return any(json.loads(body)["status"] == "resolved" for _, body, _ in sink.requests)

        await eventually(resolved, within=20, what="the cascade's resolved message")
        messages = [json.loads(body) for _, body, _ in sink.requests]
        # every message is the cascade's: the second model's own incident never paged
        assert {m["incident_id"] for m in messages} == {survivor}
        firing = [m for m in messages if m["status"] == "firing"]
        assert sorted(firing[-1]["cascade_models"]) == [A, B]
    finally:
        await run.close()
        await sink.stop()
