"""A violation resolved by hand that the engine has not cleared a while later is paged again, once.

A hand resolution tells the channels "RESOLVED by ana" while the engine's episode may still be
open; the engine then publishes nothing more for it until it clears. Without a re-page a person's
resolution would mute a live outage for good. Real NATS, Postgres and a local webhook server;
short re-page delays, waits on events (the messages received, the alerter's own records).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from nats.js import JetStreamContext

from llmscope.alerter.config import Timings
from llmscope.alerter.settings import AlerterSettings
from llmscope.alerter.silences import Silence
from llmscope.config.env import ConfigError, Env
from llmscope.proto.alert import NotificationEvent
from tests.alerter.api_side import api_side
from tests.alerter.factories import T0, cleared, violation, webhook_sink
from tests.alerter.flushes import all_flushed_after, nothing_in_flight
from tests.alerter.harness import Running, eventually, publish, start_alerter

TIMINGS = Timings(group_wait=0.3, group_interval=0.2, repeat_interval=3600)
REPAGE_S = 2.5
"""Long enough for a hand resolution to be told before it is paged again, at a load of 10."""


def paged(got: list[NotificationEvent]) -> set[str]:
    return {e.episode_id for g in got for e in g.firing}


def repages(got: list[NotificationEvent]) -> list[NotificationEvent]:
    return [g for g in got if "STILL FAILING after resolved by" in g.title]


async def quiet(run: Running) -> None:
    """Whatever the alerter would send now is a row already, and every row has been delivered."""
    moment = run.store.clock()
    await eventually(lambda: all_flushed_after(run.pool, moment, TIMINGS.group_interval), what="a flush")
    await eventually(lambda: nothing_in_flight(run.pool), what="nothing in flight")


async def test_a_violation_resolved_by_hand_and_still_open_is_paged_again_once_then_resolves_on_its_clear(
    database_url: str, js: JetStreamContext
) -> None:
    api = await api_side(js)
    sink, got = await webhook_sink()
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=TIMINGS,
        repage_after_resolve=REPAGE_S,
    )
    try:
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await api.act(ev, "resolved", "bo", "false alarm: a deploy")
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
        await quiet(run)
        await quiet(run)
        assert len(got) == 3, [g.title for g in got]
        assert await run.pool.fetchval(
            "SELECT resolved_at IS NULL AND repaged_at = $2 FROM alerter_alerts WHERE episode_id = $1",
            ev.episode_id,
            row["repaged_at"],
        )
        # The engine's clear ends it, as any firing violation.
        await publish(js, cleared(ev))
        await eventually(lambda: len(got) >= 4, what="the resolved message")
        done = got[3]
        assert done.status == "resolved"
        assert done.title.startswith("[LLMscope] RESOLVED: "), done.title
        await quiet(run)
        assert len(repages(got)) == 1
        assert len(got) == 4, [g.title for g in got]
    finally:
        await run.close()
        await sink.stop()
        await api.close()


async def test_a_clear_before_the_delay_cancels_the_page_again(
    database_url: str, js: JetStreamContext
) -> None:
    """Two violations resolved by hand; the first clears within the delay (an hour, here), the
    second is left open. An alerter started next with a short delay pages the second again and
    not the first: it had its chance to, and did not (the clear is in its tables)."""
    api = await api_side(js)
    sink, got = await webhook_sink()
    env = {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"}
    run = await start_alerter(database_url, js, env, timings=TIMINGS, repage_after_resolve=3600)
    try:
        first, second = violation(1, rule="CUSUM"), violation(2, model="qwen2.5:7b", rule="CUSUM")
        await publish(js, first, second)
        await eventually(lambda: paged(got) >= {first.episode_id, second.episode_id}, what="the page")
        await api.act(first, "resolved", "bo", "fixed")
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT resolved_by = 'bo' FROM alerter_alerts WHERE episode_id = $1", first.episode_id
            ),
            what="the first resolved by hand",
        )
        await publish(js, cleared(first))
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT cleared_at IS NOT NULL FROM alerter_alerts WHERE episode_id = $1", first.episode_id
            ),
            what="the first's clear",
        )
        await api.act(second, "resolved", "bo", "fixed too")
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT resolved_by = 'bo' FROM alerter_alerts WHERE episode_id = $1", second.episode_id
            ),
            what="the second resolved by hand",
        )
        await run.close()
        run = await start_alerter(database_url, js, env, timings=TIMINGS, repage_after_resolve=REPAGE_S)
        await eventually(lambda: len(repages(got)) >= 1, what="the second paged again")
        await quiet(run)
        again = repages(got)
        assert len(again) == 1, [g.title for g in got]
        assert [e.episode_id for e in again[0].firing] == [second.episode_id]
        assert not any(first.episode_id in {e.episode_id for e in g.firing} for g in again)
        assert await run.pool.fetchval(
            "SELECT repaged_at IS NULL FROM alerter_alerts WHERE episode_id = $1", first.episode_id
        )
    finally:
        await run.close()
        await sink.stop()
        await api.close()


async def test_two_replicas_page_again_once(database_url: str, js: JetStreamContext) -> None:
    sink, got = await webhook_sink()
    env = {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"}
    a = await start_alerter(
        database_url, js, env, instance="a", timings=TIMINGS, repage_after_resolve=REPAGE_S
    )
    b = await start_alerter(
        database_url, js, env, instance="b", timings=TIMINGS, repage_after_resolve=REPAGE_S
    )
    try:
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        assert await a.store.resolve_incident(got[0].incident_id, "ana", "restarted ollama")
        await eventually(lambda: len(repages(got)) >= 1, what="the page again")
        await quiet(a)
        assert len(repages(got)) == 1, [g.title for g in got]
        await publish(js, cleared(ev))
        await eventually(lambda: got[-1].title.startswith("[LLMscope] RESOLVED: "), what="the clear told")
        await quiet(b)
        titles = [g.title for g in got]
        assert len(repages(got)) == 1, titles
        assert len(got) == 4, titles
    finally:
        await a.close()
        await b.close()
        await sink.stop()


async def test_the_page_again_survives_a_restart_and_is_sent_once(
    database_url: str, js: JetStreamContext
) -> None:
    """The resolution is made while an alerter that does not page again runs (as one that went
    down before the delay ran out); the next one reads what is due from its tables. A further
    restart after the page again sends nothing more, and the clear resolves it."""
    sink, got = await webhook_sink()
    env = {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"}
    run = await start_alerter(database_url, js, env, timings=TIMINGS, repage_after_resolve=0)
    try:
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        assert await run.store.resolve_incident(got[0].incident_id, "ana", "restarted ollama")
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        await run.close()
        run = await start_alerter(database_url, js, env, timings=TIMINGS, repage_after_resolve=REPAGE_S)
        await eventually(lambda: len(repages(got)) >= 1, what="the page again after the restart")
        assert "STILL FAILING after resolved by ana at " in repages(got)[0].title
        assert "(restarted ollama)" in repages(got)[0].text
        await quiet(run)
        await run.close()
        run = await start_alerter(database_url, js, env, timings=TIMINGS, repage_after_resolve=REPAGE_S)
        await publish(js, cleared(ev))
        await eventually(lambda: got[-1].title.startswith("[LLMscope] RESOLVED: "), what="the clear told")
        await quiet(run)
        titles = [g.title for g in got]
        assert len(repages(got)) == 1, titles
        assert len(got) == 4, titles
    finally:
        await run.close()
        await sink.stop()


async def test_paged_again_in_a_group_still_firing_then_its_clear_is_told(
    database_url: str, js: JetStreamContext
) -> None:
    """One of an incident's two violations resolved by hand while the other fires: its group
    stays open, and the page again is news in it; its later clear is told as any resolution
    (the channel had been told it resolved once, by hand: that no longer counts)."""
    api = await api_side(js)
    sink, got = await webhook_sink()
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=TIMINGS,
        repage_after_resolve=REPAGE_S,
    )
    try:
        first, second = violation(1, rule="CUSUM"), violation(2, model="qwen2.5:7b", rule="CUSUM")
        await publish(js, first, second)
        await eventually(lambda: paged(got) >= {first.episode_id, second.episode_id}, what="the page")
        await api.act(first, "resolved", "bo", "fixed")
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
        await quiet(run)
        assert len(repages(got)) == 1, [g.title for g in got]
    finally:
        await run.close()
        await sink.stop()
        await api.close()


async def test_a_silence_mutes_the_page_again_until_it_ends(database_url: str, js: JetStreamContext) -> None:
    sink, got = await webhook_sink()
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=TIMINGS,
        repage_after_resolve=REPAGE_S,
    )
    try:
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
        await quiet(run)
        assert repages(got) == [], [g.title for g in got]
        assert await run.store.expire_silence("quiet-please")
        await eventually(lambda: len(repages(got)) >= 1, what="the page again once the silence ended")
        await quiet(run)
        assert len(repages(got)) == 1, [g.title for g in got]
    finally:
        await run.close()
        await sink.stop()


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
    api = await api_side(js)
    sink, got = await webhook_sink()
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=TIMINGS,
        repage_after_resolve=REPAGE_S,
    )
    try:
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await api.act(ev, "resolved", "bo", "made long ago", at=T0 + timedelta(minutes=1))
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        assert got[1].title.startswith("[LLMscope] RESOLVED by bo:"), got[1].title
        await eventually(lambda: len(got) >= 3, what="the page again")
        assert got[2] in repages(got), got[2].title
        await quiet(run)
        assert len(got) == 3, [g.title for g in got]
    finally:
        await run.close()
        await sink.stop()
        await api.close()
