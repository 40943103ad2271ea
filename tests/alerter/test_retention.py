"""Retention: exactly the finished records past their cutoff go; everything still needed stays."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from nats.js import JetStreamContext

from llmscope.alerter.migrate import migrate
from llmscope.alerter.retention import REPLAY_MARGIN, RetentionPolicy
from llmscope.alerter.service import Alerter, AlerterOptions
from llmscope.alerter.settings import AlerterSettings
from llmscope.alerter.store import Conn, Store
from llmscope.config.env import ConfigError, Env
from llmscope.proto.violation_action import ViolationActionEvent, action_id
from tests.alerter.factories import HttpSink, violation
from tests.alerter.flushes import TIMINGS, all_flushed_after, planned
from tests.alerter.harness import eventually, publish, start_alerter

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TABLES = (
    "alerter_delivery_attempts",
    "alerter_notifications",
    "alerter_group_alerts",
    "alerter_groups",
    "alerter_incident_similar",
    "alerter_incident_tickets",
    "alerter_incident_episodes",
    "alerter_threads",
    "alerter_incidents",
    "alerter_alerts",
    "alerter_early_clears",
    "alerter_violation_actions",
    "alerter_outbox",
    "alerter_silences",
)
KEYS = {
    "alerter_delivery_attempts": "notification_id || '#' || attempt",
    "alerter_notifications": "id",
    "alerter_group_alerts": "group_id || '/' || episode_id",
    "alerter_groups": "id::text",
    "alerter_incident_similar": "incident_id || '~' || similar_id",
    "alerter_incident_tickets": "incident_id",
    "alerter_incident_episodes": "episode_id || '@' || incident_id",
    "alerter_threads": "channel || '#' || thread_key",
    "alerter_incidents": "id",
    "alerter_alerts": "episode_id",
    "alerter_early_clears": "episode_id",
    "alerter_violation_actions": "episode_id",
    "alerter_outbox": "msg_id",
    "alerter_silences": "id",
}


# -- the cutoffs (pure) -------------------------------------------------------------------------


def test_zero_days_keeps_everything_forever() -> None:
    policy = RetentionPolicy(days=0)
    assert not policy.enabled
    assert policy.cutoffs(NOW) is None


def test_alerts_outlive_every_stream_that_could_bring_their_violation_back() -> None:
    ninety = RetentionPolicy(days=90, replay_window_s=90 * 86400)
    cut = ninety.cutoffs(NOW)
    assert cut is not None
    assert cut.now == NOW
    assert cut.records == NOW - 90 * DAY
    assert cut.replay == NOW - 90 * DAY - REPLAY_MARGIN
    short = RetentionPolicy(days=7, replay_window_s=90 * 86400).cutoffs(NOW)
    assert short is not None
    assert short.records == NOW - 7 * DAY
    assert short.replay == NOW - 91 * DAY
    long = RetentionPolicy(days=365, replay_window_s=7 * 86400).cutoffs(NOW)
    assert long is not None
    assert long.records == long.replay == NOW - 365 * DAY  # never earlier than the records
    absurd = RetentionPolicy(days=36500, replay_window_s=1e15).cutoffs(NOW)
    assert absurd is not None
    assert absurd.replay.year == 1  # nothing is that old; no OverflowError


def test_retention_days_setting_is_validated_at_start() -> None:
    base = {"DATABASE_URL": "postgresql://x@localhost/db"}
    assert AlerterSettings.from_env(Env(base)).retention_days == 90
    assert AlerterSettings.from_env(Env({**base, "LLMSCOPE_ALERTER_RETENTION_DAYS": "0"})).retention_days == 0
    assert (
        AlerterSettings.from_env(Env({**base, "LLMSCOPE_ALERTER_RETENTION_DAYS": "1.5"})).retention_days
        == 1.5
    )
    for bad in ("-1", "soon", "inf", "1e9"):
        with pytest.raises(ConfigError, match="LLMSCOPE_ALERTER_RETENTION_DAYS"):
            AlerterSettings.from_env(Env({**base, "LLMSCOPE_ALERTER_RETENTION_DAYS": bad}))


# -- the sweep against Postgres -----------------------------------------------------------------


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    async with p.acquire() as conn:
        await migrate(conn)
    try:
        yield p
    finally:
        await p.close()


def store_at(pool: asyncpg.Pool, now: datetime = NOW, instance: str = "a") -> Store:
    return Store(pool, instance=instance, clock=lambda: now)


async def alert(conn: Conn, episode: str, *, age: timedelta, cleared: timedelta | None = None) -> None:
    """An alert received ``age`` ago, cleared ``cleared`` ago (None: still firing)."""
    await conn.execute(
        "INSERT INTO alerter_alerts (episode_id, provider, model, host, rule, severity, metric,"
        " opened_at, open_event, cleared_at, cleared_event, received_at)"
        " VALUES ($1, 'ollama', 'm', 'h', 'R1', 'critical', 'latency_ms', $2, $3::jsonb, $4, $5::jsonb, $2)",
        episode,
        NOW - age,
        json.dumps({"episode_id": episode}),
        None if cleared is None else NOW - cleared,
        None if cleared is None else json.dumps({"episode_id": episode, "state": "cleared"}),
    )


async def group(
    conn: Conn,
    name: str,
    *,
    age: timedelta,
    closed: timedelta | None,
    episodes: tuple[str, ...],
    notifications: tuple[tuple[str, timedelta], ...],
) -> int:
    """A group (closed ``closed`` ago; None: active) with its members and notifications."""
    gid = int(
        await conn.fetchval(
            "INSERT INTO alerter_groups (route, group_key, labels, state, lead_episode_id, created_at,"
            " next_flush_at, closed_at) VALUES ('default', $1, '[]', $2, $3, $4, $4, $5) RETURNING id",
            name,
            "active" if closed is None else "closed",
            episodes[0],
            NOW - age,
            None if closed is None else NOW - closed,
        )
    )
    for ep in episodes:
        await conn.execute("INSERT INTO alerter_group_alerts VALUES ($1, $2)", gid, ep)
    for seq, (status, when) in enumerate(notifications, start=1):
        nid = f"{name}:{seq}"
        await conn.execute(
            "INSERT INTO alerter_notifications (id, group_id, route, group_key, channel, channel_kind,"
            " seq, reason, status, firing, resolved, announce_resolved, claimed_by, lease_until,"
            " created_at, updated_at) VALUES ($1, $2, 'default', $3, 'hook', 'webhook', $4, 'first', $5,"
            " $6, '{}', '{}', 'a', $7, $8, $8)",
            nid,
            gid,
            name,
            seq,
            status,
            list(episodes),
            NOW - when + timedelta(minutes=1) if status == "sending" else None,
            NOW - when,
        )
        await conn.execute(
            "INSERT INTO alerter_delivery_attempts VALUES ($1, 1, $2, true, false, 200, 'ok', 'a')",
            nid,
            NOW - when,
        )
    return gid


async def incident(
    conn: Conn,
    iid: str,
    *,
    state: str,
    age: timedelta,
    resolved: timedelta | None = None,
    episodes: tuple[str, ...] = (),
    lease: timedelta | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO alerter_incidents (id, state, title, severity, provider, models, opened_at,"
        " last_violation_at, resolved_at, analysis_status, analysis_lease_until)"
        " VALUES ($1, $2, 't', 'critical', 'ollama', '{m}', $3, $3, $4, $5, $6)",
        iid,
        state,
        NOW - age,
        None if resolved is None else NOW - resolved,
        "done" if lease is None else "pending",
        None if lease is None else NOW + lease,
    )
    for ep in episodes:
        await conn.execute("INSERT INTO alerter_incident_episodes VALUES ($1, $2)", ep, iid)


async def silence(
    conn: Conn,
    sid: str,
    *,
    age: timedelta,
    starts: timedelta | None = None,
    ends: timedelta | None = None,
    expired: timedelta | None = None,
    weekly: bool = False,
) -> None:
    """Times relative to NOW: ``starts``/``ends`` may be negative (the future)."""
    await conn.execute(
        "INSERT INTO alerter_silences (id, kind, reason, author, starts_at, ends_at, weekly_days,"
        " weekly_start, weekly_end, created_at, expired_at)"
        " VALUES ($1, $2, 'why', 'ana', $3, $4, $5, $6, $7, $8, $9)",
        sid,
        "maintenance" if weekly else "silence",
        None if starts is None else NOW - starts,
        None if ends is None else NOW - ends,
        [6] if weekly else None,
        datetime(2000, 1, 1, 2).time() if weekly else None,
        datetime(2000, 1, 1, 4).time() if weekly else None,
        NOW - age,
        None if expired is None else NOW - expired,
    )


async def outbox(conn: Conn, msg_id: str, *, age: timedelta, published: bool) -> None:
    await conn.execute(
        "INSERT INTO alerter_outbox (subject, msg_id, payload, created_at, published_at)"
        " VALUES ('llmscope.incidents.v1.x', $1, '\\x00', $2, $3)",
        msg_id,
        NOW - age,
        NOW - age + timedelta(seconds=1) if published else None,
    )


async def seed(pool: asyncpg.Pool) -> dict[str, set[str]]:
    """Every kind of row, old and recent, finished and not; returns the keys that must survive
    a 90-day sweep at NOW (the replay window is 90 days too)."""
    async with pool.acquire() as conn, conn.transaction():
        # Alerts: old and cleared (in a doomed group, an incident, or nothing), still firing,
        # cleared recently, cleared within the replay margin.
        for ep in ("a-grouped", "a-incident", "a-free", "a-linked"):
            await alert(conn, ep, age=120 * DAY, cleared=100 * DAY)
        await alert(conn, "a-firing", age=300 * DAY)
        await alert(conn, "a-recent", age=120 * DAY, cleared=10 * DAY)
        await alert(
            conn, "a-margin", age=90 * DAY + timedelta(hours=12), cleared=90 * DAY + timedelta(hours=6)
        )
        for ep in ("a-in-active", "a-in-sending", "a-in-recent", "a-in-res-firing"):
            await alert(conn, ep, age=200 * DAY, cleared=150 * DAY)
        await alert(conn, "a-open-incident", age=200 * DAY, cleared=150 * DAY)
        await conn.execute("INSERT INTO alerter_early_clears VALUES ('e-old', '{}', $1)", NOW - 100 * DAY)
        await conn.execute("INSERT INTO alerter_early_clears VALUES ('e-new', '{}', $1)", NOW - DAY)
        # People's actions from the API: kept while their episode's alert is (a-firing: still
        # open 300 days on; a-recent: cleared 10 days ago), then, as early clears, while their
        # violation or an action event may come again since the last one came (x-active: first
        # received 200 days ago, its last event 5 days ago).
        for ep, age, last in (
            ("x-old", 100 * DAY, 100 * DAY),
            ("x-new", DAY, DAY),
            ("x-active", 200 * DAY, 5 * DAY),
            ("a-firing", 299 * DAY, 299 * DAY),
            ("a-recent", 119 * DAY, 119 * DAY),
            ("a-free", 119 * DAY, 119 * DAY),
        ):
            await conn.execute(
                "INSERT INTO alerter_violation_actions (episode_id, acknowledged_by, acknowledged_at,"
                " received_at, last_event_at) VALUES ($1, 'ana', $2, $2, $3)",
                ep,
                NOW - age,
                NOW - last,
            )

        # Groups: closed long ago with finished notifications (goes, members too); closed long
        # ago but a claim still 'sending' (stays); active with old notifications (dedup and
        # reminders read them: stays); closed recently (stays).
        await group(
            conn,
            "g-done",
            age=120 * DAY,
            closed=100 * DAY,
            episodes=("a-grouped", "a-linked"),
            notifications=(("sent", 119 * DAY), ("failed", 110 * DAY), ("expired", 100 * DAY)),
        )
        await group(
            conn,
            "g-sending",
            age=200 * DAY,
            closed=150 * DAY,
            episodes=("a-in-sending",),
            notifications=(("sent", 190 * DAY), ("sending", 150 * DAY)),
        )
        await group(
            conn,
            "g-active",
            age=200 * DAY,
            closed=None,
            episodes=("a-in-active", "a-firing"),
            notifications=(("sent", 199 * DAY), ("sent", 150 * DAY)),
        )
        await group(
            conn,
            "g-recent",
            age=200 * DAY,
            closed=10 * DAY,
            episodes=("a-in-recent",),
            notifications=(("sent", 20 * DAY),),
        )

        # Incidents: resolved long ago (goes, its links too); resolved by hand while a violation
        # still fires, open, acknowledged, resolved recently, analysis under way (all stay).
        await incident(
            conn,
            "i-done",
            state="resolved",
            age=120 * DAY,
            resolved=100 * DAY,
            episodes=("a-incident", "a-linked"),
        )
        await incident(conn, "i-done-2", state="resolved", age=130 * DAY, resolved=125 * DAY)
        await incident(
            conn,
            "i-firing",
            state="resolved",
            age=200 * DAY,
            resolved=150 * DAY,
            episodes=("a-in-res-firing", "a-firing"),
        )
        await incident(conn, "i-open", state="open", age=200 * DAY, episodes=("a-open-incident",))
        await incident(conn, "i-acked", state="acknowledged", age=200 * DAY)
        await incident(conn, "i-recent", state="resolved", age=20 * DAY, resolved=10 * DAY)
        await incident(conn, "i-analysing", state="resolved", age=200 * DAY, resolved=150 * DAY, lease=DAY)
        for a, b in (
            ("i-done", "i-done-2"),
            ("i-recent", "i-done"),
            ("i-recent", "i-open"),
            ("i-open", "i-acked"),
        ):
            await conn.execute("INSERT INTO alerter_incident_similar VALUES ($1, $2, 0.5)", a, b)
        # Slack threads: a swept incident's or group's thread goes; an open incident's, an active
        # or recently closed group's stay.
        groups = [f"group:{await gid_of(conn, g)}" for g in ("g-done", "g-active", "g-recent")]
        for key in ("incident:i-done", "incident:i-open", *groups):
            await conn.execute(
                "INSERT INTO alerter_threads (channel, thread_key, ref) VALUES ('chat', $1, '1.2')", key
            )
        # Tickets go with their incident.
        for i in ("i-done", "i-open"):
            await conn.execute(
                "INSERT INTO alerter_incident_tickets (incident_id, tracker, marker, ticket_key, state,"
                " next_try_at, created_at, updated_at) VALUES ($1, 'github', $1, '7', 'open', $2, $2, $2)",
                i,
                NOW - 100 * DAY,
            )

        # Outbox: published long ago (goes), never published (stays), published recently.
        await outbox(conn, "o-sent-old", age=100 * DAY, published=True)
        await outbox(conn, "o-pending-old", age=100 * DAY, published=False)
        await outbox(conn, "o-sent-new", age=DAY, published=True)

        # Silences: expired by hand long ago, ended long ago (go); ended recently, active,
        # future, open-ended weekly maintenance, old but expired only recently (stay).
        await silence(conn, "s-expired-old", age=200 * DAY, ends=-10 * DAY, expired=100 * DAY)
        await silence(conn, "s-ended-old", age=200 * DAY, starts=150 * DAY, ends=100 * DAY)
        await silence(conn, "s-ended-new", age=200 * DAY, ends=10 * DAY)
        await silence(conn, "s-active", age=200 * DAY, starts=200 * DAY, ends=-30 * DAY)
        await silence(conn, "s-future", age=200 * DAY, starts=-10 * DAY, ends=-20 * DAY)
        await silence(conn, "s-weekly", age=400 * DAY, weekly=True)
        await silence(conn, "s-expired-new", age=200 * DAY, ends=-100 * DAY, expired=DAY)
    everything = await remaining(pool)
    gone = {
        "alerter_delivery_attempts": {"g-done:1#1", "g-done:2#1", "g-done:3#1"},
        "alerter_notifications": {"g-done:1", "g-done:2", "g-done:3"},
        "alerter_group_alerts": {
            f"{await gid_of(pool, 'g-done')}/a-grouped",
            f"{await gid_of(pool, 'g-done')}/a-linked",
        },
        "alerter_groups": {str(await gid_of(pool, "g-done"))},
        "alerter_incident_similar": {"i-done~i-done-2", "i-recent~i-done"},
        "alerter_incident_tickets": {"i-done"},
        "alerter_incident_episodes": {"a-incident@i-done", "a-linked@i-done"},
        "alerter_threads": {"chat#incident:i-done", f"chat#group:{await gid_of(pool, 'g-done')}"},
        "alerter_incidents": {"i-done", "i-done-2"},
        "alerter_alerts": {"a-grouped", "a-incident", "a-free", "a-linked"},
        "alerter_early_clears": {"e-old"},
        "alerter_violation_actions": {"x-old", "a-free"},
        "alerter_outbox": {"o-sent-old"},
        "alerter_silences": {"s-expired-old", "s-ended-old"},
    }
    for table, keys in gone.items():
        assert keys <= everything[table], (table, keys - everything[table])
    return {table: everything[table] - gone[table] for table in TABLES}


async def gid_of(pool: asyncpg.Pool | Conn, name: str) -> int:
    return int(await pool.fetchval("SELECT id FROM alerter_groups WHERE group_key = $1", name))


async def remaining(pool: asyncpg.Pool) -> dict[str, set[str]]:
    return {
        table: {r["k"] for r in await pool.fetch(f"SELECT {KEYS[table]} AS k FROM {table}")}
        for table in TABLES
    }


@pytest.mark.parametrize("batch", [1, 2, 500])
async def test_sweep_deletes_exactly_the_old_finished_records(pool: asyncpg.Pool, batch: int) -> None:
    keep = await seed(pool)
    before = await remaining(pool)
    cutoffs = RetentionPolicy(days=90, replay_window_s=90 * 86400).cutoffs(NOW)
    assert cutoffs is not None
    counts = await store_at(pool).sweep(cutoffs, batch=batch)
    after = await remaining(pool)
    assert after == keep
    assert counts == {t: len(before[t]) - len(keep[t]) for t in TABLES}
    again = await store_at(pool).sweep(cutoffs, batch=batch)
    assert again == dict.fromkeys(TABLES, 0)


async def test_alerts_stay_for_the_replay_window_even_with_a_short_retention(pool: asyncpg.Pool) -> None:
    await seed(pool)
    async with pool.acquire() as conn:
        await alert(conn, "a-60", age=70 * DAY, cleared=60 * DAY)
        await group(
            conn,
            "g-60",
            age=70 * DAY,
            closed=60 * DAY,
            episodes=("a-60",),
            notifications=(("sent", 65 * DAY),),
        )
        await incident(conn, "i-60", state="resolved", age=70 * DAY, resolved=60 * DAY, episodes=("a-60",))
        await conn.execute("INSERT INTO alerter_early_clears VALUES ('e-60', '{}', $1)", NOW - 60 * DAY)
    cutoffs = RetentionPolicy(days=30, replay_window_s=90 * 86400).cutoffs(NOW)
    assert cutoffs is not None
    await store_at(pool).sweep(cutoffs)
    after = await remaining(pool)
    # The group and incident past 30 days went; their alert waits for the streams to forget it.
    assert "g-60:1" not in after["alerter_notifications"]
    assert "i-60" not in after["alerter_incidents"]
    assert not any(k.endswith("/a-60") for k in after["alerter_group_alerts"])
    assert {"a-60", "a-margin"} <= after["alerter_alerts"]
    assert "e-60" in after["alerter_early_clears"]
    assert not {"a-grouped", "a-incident", "a-free", "a-linked"} & after["alerter_alerts"]  # past 91 days
    assert "e-old" not in after["alerter_early_clears"]
    assert "g-recent:1" in after["alerter_notifications"]  # closed 10 days ago
    assert "s-ended-new" in after["alerter_silences"]


async def test_an_action_counts_from_the_last_event_that_came_applied_or_not(pool: asyncpg.Pool) -> None:
    """First received 100 days ago, its episode's alert gone: an event of it that comes now (an
    older one again, a replay: not applied) keeps it for another replay window."""
    now = datetime.now(UTC)
    await pool.execute(
        "INSERT INTO alerter_violation_actions (episode_id, acknowledged_by, acknowledged_at, note, seq,"
        " received_at, last_event_at) VALUES ('x-replayed', 'ana', $1, 'fixed', 2, $1, $1),"
        " ('x-quiet', 'ana', $1, NULL, 1, $1, $1)",
        now - 100 * DAY,
    )
    older = ViolationActionEvent(
        id=action_id("x-replayed", "acknowledged", None, 1),
        ts=now - 100 * DAY,
        action="acknowledged",
        violation_id="x-replayed",
        episode_id="x-replayed",
        provider="ollama",
        model="m",
        acknowledged_by="ana",
        acknowledged_at=now - 100 * DAY,
        seq=1,
    )
    store = store_at(pool)
    await store.record_violation_actions([older])
    cutoffs = RetentionPolicy(days=90, replay_window_s=90 * 86400).cutoffs(now)
    assert cutoffs is not None
    await store.sweep(cutoffs)
    rows = await pool.fetch("SELECT episode_id, note, seq FROM alerter_violation_actions")
    assert [tuple(r) for r in rows] == [("x-replayed", "fixed", 2)]


async def test_zero_days_deletes_nothing(pool: asyncpg.Pool) -> None:
    await seed(pool)
    before = await remaining(pool)
    async with aiohttp.ClientSession() as session:
        alerter = Alerter(
            store_at(pool),
            env=Env({}),
            session=session,
            publisher=None,
            options=AlerterOptions(retention=RetentionPolicy(days=0)),
        )
        assert await alerter.sweep_once() is None
    assert await remaining(pool) == before


async def test_sweep_once_through_the_service_and_two_replicas_at_once(pool: asyncpg.Pool) -> None:
    keep = await seed(pool)
    async with aiohttp.ClientSession() as session:
        replicas = [
            Alerter(
                store_at(pool, instance=name),
                env=Env({}),
                session=session,
                publisher=None,
                options=AlerterOptions(retention=RetentionPolicy(days=90, replay_window_s=90 * 86400)),
            )
            for name in ("a", "b")
        ]
        results = await asyncio.gather(*(r.sweep_once() for r in replicas))
    assert any(r is not None for r in results)  # the other one swept too, or skipped the round
    assert await remaining(pool) == keep


async def test_the_start_up_sweep_keeps_an_active_silence_and_the_alerter_working(
    database_url: str, js: JetStreamContext
) -> None:
    sink = HttpSink()
    url = await sink.start()
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO alerter_outbox (subject, msg_id, payload, created_at, published_at)"
            " VALUES ('s', 'o-old', '\\x00', now() - interval '100 days', now() - interval '100 days');"
            "INSERT INTO alerter_silences (id, reason, author, models, starts_at, ends_at, created_at)"
            " VALUES ('s-ended', 'why', 'ana', '{llama*}', now() - interval '200 days',"
            " now() - interval '100 days', now() - interval '200 days'),"
            " ('s-long', 'migration', 'ana', '{llama*}', now() - interval '200 days',"
            " now() + interval '1 day', now() - interval '200 days')"
        )
    finally:
        await conn.close()
    run = await start_alerter(database_url, js, {"LLMSCOPE_WEBHOOK_URL": url + "/hook"}, timings=TIMINGS)
    try:

        async def swept() -> bool:
            left = await run.pool.fetchval(
                "SELECT (SELECT count(*) FROM alerter_outbox) + (SELECT count(*) FROM alerter_silences)"
            )
            return int(left) == 1

        await eventually(swept, what="the start-up sweep")
        assert await run.pool.fetchval("SELECT id FROM alerter_silences") == "s-long"
        await publish(js, violation(1), violation(2, model="qwen2:7b"))
        await eventually(lambda: len(sink.requests) >= 1, what="the qwen message")
        # Every group flushed since, and the qwen message is the only one any flush planned.
        seen = run.store.clock()
        await eventually(
            lambda: all_flushed_after(run.pool, seen, TIMINGS.group_interval), what="later flushes"
        )
        assert sum((await planned(run.pool)).values()) == 1
        assert len(sink.requests) == 1
        assert b"qwen2:7b" in sink.requests[0][1]
        muted = await run.pool.fetchval("SELECT muted_by FROM alerter_alerts WHERE model = 'llama3.1:8b'")
        assert muted == "s-long"
    finally:
        await run.close()
        await sink.stop()
