"""A violation resolved by hand that the engine has not cleared a while later is paged again, once.

A hand resolution tells the channels "RESOLVED by ana" while the engine's episode may still be
open; the engine then publishes nothing more for it until it clears. Without a re-page a person's
resolution would mute a live outage for good. Real NATS, Postgres and local webhook servers
(``tests/alerter/paging.py``); short re-page delays, waits on events (the messages received, the
alerter's own records).
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from llmscope.alerter.config import AlerterFile
from llmscope.alerter.migrate import migrate, migration_files
from llmscope.alerter.settings import AlerterSettings
from llmscope.alerter.silences import Silence
from llmscope.config.env import ConfigError, Env
from llmscope.proto import codec
from llmscope.proto.alert import NotificationEvent
from llmscope.proto.base import utcnow
from tests.alerter.factories import T0, cleared, violation, webhook_sink
from tests.alerter.harness import Running, eventually, publish
from tests.alerter.paging import incident_events, paging

REPAGE_S = 2.5
"""Long enough for a hand resolution to be told before it is paged again, at a load of 10."""


def paged(got: list[NotificationEvent]) -> set[str]:
    return {e.episode_id for g in got for e in g.firing}


def repages(got: list[NotificationEvent]) -> list[NotificationEvent]:
    return [g for g in got if "STILL FAILING after resolved by" in g.title]


async def resolved_by(run: Running, episode_id: str, who: str) -> bool:
    """Whether the alerter applied ``who``'s hand resolution to the episode's alert."""
    return bool(
        await run.pool.fetchval(
            "SELECT resolved_by = $2 FROM alerter_alerts WHERE episode_id = $1", episode_id, who
        )
    )


async def test_a_violation_resolved_by_hand_and_still_open_is_paged_again_once_then_resolves_on_its_clear(
    database_url: str, js: JetStreamContext
) -> None:
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        run, got = p.run, p.got
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await p.api.act(ev, "resolved", "bo", "false alarm: a deploy")
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        assert got[1].title.startswith("[LLMscope] RESOLVED by bo:"), got[1].title
        # No clear from the engine: the outage goes on, and is paged again.
        await eventually(lambda: len(got) >= 3, what="the page again")
        again = got[2]
        assert again.status == "firing", again.title
        assert [e.episode_id for e in again.firing] == [ev.episode_id]
        assert again.title.startswith("[LLMscope] CRITICAL: STILL FAILING after resolved by bo at "), (
            again.title
        )
        assert "Still failing:" in again.text, again.text
        assert "resolved by bo at " in again.text
        assert "(false alarm: a deploy), but the engine has not cleared it since" in again.text
        row = await run.pool.fetchrow(
            "SELECT resolved_at, repaged_at, repage_of_by FROM alerter_alerts WHERE episode_id = $1",
            ev.episode_id,
        )
        assert row is not None
        assert row["resolved_at"] is None
        assert row["repaged_at"] is not None
        assert row["repage_of_by"] == "bo"
        # The API's resolution that was paged again does not resolve it again (nor is it
        # paged again a second time, even unseen by the channels).
        await p.quiet()
        await p.quiet()
        assert len(got) == 3, [g.title for g in got]
        assert await run.pool.fetchval(
            "SELECT resolved_at IS NULL AND repaged_at = $2 FROM alerter_alerts WHERE episode_id = $1",
            ev.episode_id,
            row["repaged_at"],
        )
        # A new page: the acknowledgement that came with the API's resolution acknowledged the
        # page it undid, not this one (flushes since have not copied it back) ...
        assert await run.pool.fetchval(
            "SELECT acknowledged_at IS NULL FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
        )
        # ... and the incident's event names it, for the API to reopen its violation.
        last = (await incident_events(run, again.incident_id))[-1]
        assert (last.state, last.change) == ("open", "updated")
        assert [(r.episode_id, r.resolved_by) for r in last.repaged] == [(ev.episode_id, "bo")]
        assert last.repaged[0].repaged_at == row["repaged_at"]
        # The engine's clear ends it, as any firing violation.
        await publish(js, cleared(ev))
        await eventually(lambda: len(got) >= 4, what="the resolved message")
        done = got[3]
        assert done.status == "resolved"
        assert done.title.startswith("[LLMscope] RESOLVED: "), done.title
        await p.quiet()
        assert len(repages(got)) == 1
        assert len(got) == 4, [g.title for g in got]


async def test_a_page_again_reopens_its_incident_to_be_acknowledged_and_resolved_again(
    database_url: str, js: JetStreamContext
) -> None:
    """The incident resolved by hand is open again with its violation (neither acknowledged nor
    resolved): the on-call who gets the page again acknowledges it, then resolves it, which the
    channels hear, as any incident's; the one who resolved it first is no longer its resolver.
    That resolution, the engine still not clearing, is paged again in its turn."""
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        run, got = p.run, p.got
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        incident_id = got[0].incident_id
        assert await run.store.acknowledge_incident(incident_id, "ana", "looking")
        assert await run.store.resolve_incident(incident_id, "ana", "restarted ollama")
        assert not await run.store.acknowledge_incident(incident_id, "bo")
        await eventually(lambda: len(repages(got)) >= 1, what="the page again")
        opened = await run.store.incident(incident_id)
        assert opened is not None
        assert (opened.state, opened.resolved_by, opened.acknowledged_by) == ("open", None, None)
        assert [r.episode_id for r in opened.repaged] == [ev.episode_id]
        assert await run.pool.fetchval(
            "SELECT acknowledged_at IS NULL FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
        )
        # Told to the API too: the event of the page again is on the outbox.
        assert any(e.state == "open" and e.repaged for e in await incident_events(run, incident_id))

        assert await run.store.acknowledge_incident(incident_id, "bo", "on it again")
        assert await run.pool.fetchval(
            "SELECT acknowledged_by = 'bo' FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
        )
        assert await run.store.resolve_incident(incident_id, "bo", "rolled back")
        await eventually(
            lambda: got[-1].title.startswith("[LLMscope] RESOLVED by bo:"), what="the second resolution told"
        )
        assert "rolled back" in got[-1].text
        resolved = await run.store.incident(incident_id)
        assert resolved is not None
        assert (resolved.state, resolved.resolved_by, resolved.repaged) == ("resolved", "bo", ())
        # Still not cleared: that resolution is paged again in turn, once, and its incident reopens.
        await eventually(lambda: len(repages(got)) >= 2, what="the second resolution paged again")
        assert "STILL FAILING after resolved by bo at " in repages(got)[1].title, repages(got)[1].title
        again = await run.store.incident(incident_id)
        assert again is not None
        assert again.state == "open"
        assert [(r.episode_id, r.resolved_by) for r in again.repaged] == [(ev.episode_id, "bo")]
        await p.quiet()
        assert len(repages(got)) == 2, [g.title for g in got]


async def test_a_clear_before_the_delay_cancels_the_page_again(
    database_url: str, js: JetStreamContext
) -> None:
    """Two violations resolved by hand; the first clears within the delay (an hour, here), the
    second is left open. An alerter started next with a short delay pages the second again and
    not the first: it had its chance to, and did not (the clear is in its tables)."""
    async with paging(database_url, js, repage_after_resolve=3600) as p:
        got = p.got
        first, second = violation(1, rule="CUSUM"), violation(2, model="qwen2.5:7b", rule="CUSUM")
        await publish(js, first, second)
        await eventually(lambda: paged(got) >= {first.episode_id, second.episode_id}, what="the page")
        await p.api.act(first, "resolved", "bo", "fixed")
        await eventually(
            lambda: resolved_by(p.run, first.episode_id, "bo"), what="the first resolved by hand"
        )
        await publish(js, cleared(first))
        await eventually(
            lambda: p.run.pool.fetchval(
                "SELECT cleared_at IS NOT NULL FROM alerter_alerts WHERE episode_id = $1", first.episode_id
            ),
            what="the first's clear",
        )
        await p.api.act(second, "resolved", "bo", "fixed too")
        await eventually(
            lambda: resolved_by(p.run, second.episode_id, "bo"), what="the second resolved by hand"
        )
        run = await p.restart(repage_after_resolve=REPAGE_S)
        await eventually(lambda: len(repages(got)) >= 1, what="the second paged again")
        await p.quiet()
        again = repages(got)
        assert len(again) == 1, [g.title for g in got]
        assert [e.episode_id for e in again[0].firing] == [second.episode_id]
        assert not any(first.episode_id in {e.episode_id for e in g.firing} for g in again)
        assert await run.pool.fetchval(
            "SELECT repaged_at IS NULL FROM alerter_alerts WHERE episode_id = $1", first.episode_id
        )


async def test_two_replicas_page_again_once(database_url: str, js: JetStreamContext) -> None:
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        a, got = p.run, p.got
        b = await p.start(instance="b", repage_after_resolve=REPAGE_S)
        try:
            ev = violation(1, rule="CUSUM")
            await publish(js, ev)
            await eventually(lambda: len(got) >= 1, what="the page")
            assert await a.store.resolve_incident(got[0].incident_id, "ana", "restarted ollama")
            await eventually(lambda: len(repages(got)) >= 1, what="the page again")
            await p.quiet(a)
            assert len(repages(got)) == 1, [g.title for g in got]
            await publish(js, cleared(ev))
            await eventually(lambda: got[-1].title.startswith("[LLMscope] RESOLVED: "), what="the clear told")
            await p.quiet(b)
            titles = [g.title for g in got]
            assert len(repages(got)) == 1, titles
            assert len(got) == 4, titles
        finally:
            await b.close()


async def test_the_page_again_survives_a_restart_and_is_sent_once(
    database_url: str, js: JetStreamContext
) -> None:
    """The resolution is made while an alerter that does not page again runs (as one that went
    down before the delay ran out); the next one reads what is due from its tables. A further
    restart after the page again sends nothing more, and the clear resolves it."""
    async with paging(database_url, js, repage_after_resolve=0) as p:
        got = p.got
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        assert await p.run.store.resolve_incident(got[0].incident_id, "ana", "restarted ollama")
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        await p.restart(repage_after_resolve=REPAGE_S)
        await eventually(lambda: len(repages(got)) >= 1, what="the page again after the restart")
        assert "STILL FAILING after resolved by ana at " in repages(got)[0].title
        assert "(restarted ollama)" in repages(got)[0].text
        await p.quiet()
        await p.restart(repage_after_resolve=REPAGE_S)
        await publish(js, cleared(ev))
        await eventually(lambda: got[-1].title.startswith("[LLMscope] RESOLVED: "), what="the clear told")
        await p.quiet()
        titles = [g.title for g in got]
        assert len(repages(got)) == 1, titles
        assert len(got) == 4, titles


async def test_paged_again_in_a_group_still_firing_then_its_clear_is_told(
    database_url: str, js: JetStreamContext
) -> None:
    """One of an incident's two violations resolved by hand while the other fires: its group
    stays open, and the page again is news in it; its later clear is told as any resolution
    (the channel had been told it resolved once, by hand: that no longer counts)."""
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        got = p.got
        first, second = violation(1, rule="CUSUM"), violation(2, model="qwen2.5:7b", rule="CUSUM")
        await publish(js, first, second)
        await eventually(lambda: paged(got) >= {first.episode_id, second.episode_id}, what="the page")
        await p.api.act(first, "resolved", "bo", "fixed")
        await eventually(
            lambda: any(first.episode_id in {e.episode_id for e in g.resolved} for g in got),
            what="the hand resolution told",
        )
        await eventually(lambda: len(repages(got)) >= 1, what="the page again")
        again = repages(got)[0]
        assert again.reason == "new_violations", again.reason
        assert {e.episode_id for e in again.firing} == {first.episode_id, second.episode_id}
        await publish(js, cleared(first))
        await eventually(
            lambda: any(
                first.episode_id in {e.episode_id for e in g.resolved} for g in got[got.index(again) :]
            ),
            what="its clear told",
        )
        await p.quiet()
        assert len(repages(got)) == 1, [g.title for g in got]


async def test_the_groups_later_messages_are_titled_for_their_own_news_not_the_page_again(
    database_url: str, js: JetStreamContext
) -> None:
    """The page again leads its own message's title; the group's next message, about the other
    violation's clear while the one paged again still fires, is titled for that clear (the
    page again stays a line of its facts)."""
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        got = p.got
        first, second = violation(1, rule="CUSUM"), violation(2, model="qwen2.5:7b", rule="CUSUM")
        await publish(js, first, second)
        await eventually(lambda: paged(got) >= {first.episode_id, second.episode_id}, what="the page")
        await p.api.act(first, "resolved", "bo", "fixed")
        await eventually(lambda: len(repages(got)) >= 1, what="the page again")
        await p.quiet()
        told = len(got)
        await publish(js, cleared(second))
        await eventually(lambda: len(got) > told, what="the other violation's clear told")
        update = got[told]
        assert [e.episode_id for e in update.firing] == [first.episode_id]
        assert [e.episode_id for e in update.resolved] == [second.episode_id]
        assert update.title.startswith("[LLMscope] UPDATE, still CRITICAL: Cascade on gpu-1: "), update.title
        assert "STILL FAILING" not in update.title, update.title
        assert "[1 still firing, 1 resolved]" in update.title
        assert "Still failing:" in update.text  # still a fact of the violation paged again


async def test_a_channel_without_resolved_messages_hears_the_page_again_in_a_group_still_firing(
    database_url: str, js: JetStreamContext
) -> None:
    """A channel with ``send_resolved: false`` is never told the hand resolution, so for it the
    violation fired all along: the page again is still news to it (a firing message, which it
    takes), in the group its other violation keeps open."""
    quiet_sink, quiet_got = await webhook_sink()
    file = msgspec.convert(
        {
            "channels": [
                {
                    "name": "quiet-hook",
                    "kind": "webhook",
                    "url": quiet_sink.url + "/quiet",
                    "send_resolved": False,
                }
            ]
        },
        AlerterFile,
    )
    try:
        async with paging(database_url, js, repage_after_resolve=REPAGE_S, config_file=file) as p:
            got = p.got
            first, second = violation(1, rule="CUSUM"), violation(2, model="qwen2.5:7b", rule="CUSUM")
            await publish(js, first, second)
            both = {first.episode_id, second.episode_id}
            await eventually(lambda: paged(got) >= both and paged(quiet_got) >= both, what="both paged")
            await p.api.act(first, "resolved", "bo", "fixed")
            await eventually(
                lambda: len(repages(got)) >= 1, what="the page again (the channel told resolved)"
            )
            await eventually(
                lambda: len(repages(quiet_got)) >= 1, what="the page again (send_resolved: false)"
            )
            await p.quiet()
            [again] = repages(quiet_got)
            assert again.status == "firing"
            assert again.reason == "new_violations", again.reason
            assert {e.episode_id for e in again.firing} == both
            assert not any(g.resolved for g in quiet_got), [g.title for g in quiet_got]
            assert len(repages(got)) == 1, [g.title for g in got]
    finally:
        await quiet_sink.stop()


async def test_a_silence_mutes_the_page_again_until_it_ends(database_url: str, js: JetStreamContext) -> None:
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        run, got = p.run, p.got
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await run.store.add_silence(
            Silence(
                id="quiet-please",
                reason="working on it",
                author="ana",
                models=(ev.model,),
                ends_at=run.store.clock() + timedelta(hours=1),
            )
        )
        assert await run.store.resolve_incident(got[0].incident_id, "ana", "restarted ollama")
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT repaged_at IS NOT NULL AND muted_by = 'quiet-please' FROM alerter_alerts"
                " WHERE episode_id = $1",
                ev.episode_id,
            ),
            what="firing again, muted",
        )
        await p.quiet()
        assert repages(got) == [], [g.title for g in got]
        assert await run.store.expire_silence("quiet-please")
        await eventually(lambda: len(repages(got)) >= 1, what="the page again once the silence ended")
        await p.quiet()
        assert len(repages(got)) == 1, [g.title for g in got]


def test_the_delay_is_read_and_validated_at_start() -> None:
    base = {"DATABASE_URL": "postgresql://x@localhost/db"}
    var = "LLMSCOPE_ALERTER_REPAGE_AFTER_RESOLVE_S"
    assert AlerterSettings.from_env(Env(base)).repage_after_resolve_s == 3600
    assert AlerterSettings.from_env(Env({**base, var: "0"})).repage_after_resolve_s == 0
    assert AlerterSettings.from_env(Env({**base, var: "90"})).repage_after_resolve_s == 90
    for bad in ("-1", "soon", "inf", "1e12"):
        with pytest.raises(ConfigError, match=var):
            AlerterSettings.from_env(Env({**base, var: bad}))


async def test_a_resolution_applied_late_is_told_first_and_paged_again_only_after_the_delay(
    database_url: str, js: JetStreamContext
) -> None:
    """The delay counts from when the alerter applied the resolution (and told the channels), not
    from the person's time: an action that reaches it long after it was made (an alerter behind,
    or down) is a resolution to tell first, not a page again at once."""
    async with paging(database_url, js, repage_after_resolve=REPAGE_S) as p:
        got = p.got
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await p.api.act(ev, "resolved", "bo", "made long ago", at=T0 + timedelta(minutes=1))
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        assert got[1].title.startswith("[LLMscope] RESOLVED by bo:"), got[1].title
        await eventually(lambda: len(got) >= 3, what="the page again")
        assert got[2] in repages(got), got[2].title
        await p.quiet()
        assert len(got) == 3, [g.title for g in got]


async def test_hand_resolutions_made_before_migration_017_are_never_paged_again(
    database_url: str, js: JetStreamContext
) -> None:
    """An alerter from before the page again (migrations up to 016) paged a violation and stored
    a person's resolution of it, the engine never clearing it. Upgraded (017 and on) with a short
    delay, it pages nothing: that resolution was made when it meant quiet until the clear, and an
    upgrade must not page every old one at once. A resolution made after the upgrade is paged
    again as usual."""
    ev = violation(1, rule="CUSUM")
    resolved_at = utcnow() - timedelta(hours=2)
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "CREATE TABLE alerter_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for version, name, sql in migration_files():
                if version <= 16:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO alerter_schema_migrations (version, name) VALUES ($1, $2)", version, name
                    )
        # As the alerter before 017 wrote them: the alert and its group (paged), then the hand
        # resolution (store.py's INSERT, _hand_resolved's UPDATE of then).
        await conn.execute(
            "INSERT INTO alerter_alerts (episode_id, provider, model, host, rule, severity, metric,"
            " opened_at, open_event) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)",
            ev.episode_id,
            ev.provider,
            ev.model,
            ev.host,
            ev.rule,
            ev.severity,
            ev.metric,
            ev.ts,
            codec.encode(ev).decode(),
        )
        group_id = await conn.fetchval(
            "INSERT INTO alerter_groups (route, group_key, labels, lead_episode_id, created_at,"
            " next_flush_at, state, closed_at) VALUES ('default', 'model=ollama/llama3.1:8b', '[]'::jsonb,"
            " $1, $2, $2, 'closed', $3) RETURNING id",
            ev.episode_id,
            ev.ts,
            resolved_at,
        )
        await conn.execute(
            "INSERT INTO alerter_group_alerts (group_id, episode_id) VALUES ($1, $2)", group_id, ev.episode_id
        )
        await conn.execute(
            "UPDATE alerter_alerts SET resolved_at = $2, resolved_by = $3, resolved_note = $4"
            " WHERE episode_id = $1 AND cleared_at IS NULL AND resolved_at IS NULL",
            ev.episode_id,
            resolved_at,
            "ana",
            "restarted ollama",
        )
        assert "017_repage_after_hand_resolution.sql" in await migrate(conn)
    finally:
        await conn.close()

    async with paging(database_url, js, repage_after_resolve=0.5) as p:
        run, got = p.run, p.got
        # Several dispatch ticks past the delay (each looks for what is due), then nothing sent.
        moment = run.store.clock()
        await eventually(
            lambda: run.store.clock() - moment > timedelta(seconds=2), what="ticks past the delay"
        )
        await p.quiet()
        assert got == [], [g.title for g in got]
        row = await run.pool.fetchrow(
            "SELECT resolved_by, repaged_at, hand_resolved_applied_at FROM alerter_alerts"
            " WHERE episode_id = $1",
            ev.episode_id,
        )
        assert row is not None
        assert (row["resolved_by"], row["repaged_at"], row["hand_resolved_applied_at"]) == ("ana", None, None)
