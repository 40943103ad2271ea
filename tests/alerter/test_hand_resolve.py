"""A person resolving an incident or a violation by hand tells the channels that were paged, once.

Real NATS, Postgres and a local webhook server; what a person does through the API reaches the
alerter as the API's ``violation_action.v1`` events (the alerter never reads the API's tables).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from msgspec import structs
from nats.js import JetStreamContext

from llmscope.alerter.config import Timings
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent, action_id
from tests.alerter.factories import T0, cleared, violation
from tests.alerter.harness import eventually, publish
from tests.alerter.paging import incident_events, paging

SLOW_FLUSHES = Timings(group_wait=0.3, group_interval=600, repeat_interval=3600)
"""A group interval far beyond the tests' waits: only a hand resolution's own flush sends."""


async def test_an_incident_resolved_by_hand_is_told_at_once_and_its_later_clear_sends_nothing(
    database_url: str, js: JetStreamContext
) -> None:
    async with paging(database_url, js) as p:
        run, got = p.run, p.got
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        assert await run.store.resolve_incident(got[0].incident_id, "ana", "restarted ollama")
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        told = got[1]
        assert told.status == "resolved"
        assert told.reason == "resolved"
        assert told.title.startswith("[LLMscope] RESOLVED by ana: ollama/llama3.1:8b"), told.title
        assert "Resolved by:    ana at " in told.text, told.text
        assert ": restarted ollama" in told.text
        # The engine's clear comes later: the channel was told already.
        await publish(js, cleared(ev))
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT cleared_at IS NOT NULL FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
            ),
            what="the clear recorded",
        )
        await p.quiet()
        assert len(got) == 2, [g.title for g in got]


async def test_a_violation_resolved_through_the_api_is_told_without_waiting_for_the_group_interval(
    database_url: str, js: JetStreamContext
) -> None:
    async with paging(database_url, js, timings=SLOW_FLUSHES) as p:
        run, got, api = p.run, p.got, p.api
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await api.act(ev, "resolved", "bo", "false alarm: a deploy")
        await eventually(lambda: len(got) >= 2, within=10, what="the hand resolution's message")
        assert got[1].title.startswith("[LLMscope] RESOLVED by bo:"), got[1].title
        assert "false alarm: a deploy" in got[1].text
        state = await run.pool.fetchval(
            "SELECT resolved_by FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
        )
        assert state == "bo"


async def test_a_resolution_that_comes_before_its_violation_is_applied_when_the_violation_does(
    database_url: str, js: JetStreamContext
) -> None:
    """The API's action and the engine's violation travel in two streams: an alerter behind on
    violations keeps the action (acked once stored) and applies it when the violation comes."""
    async with paging(database_url, js) as p:
        run, got, api = p.run, p.got, p.api
        ev = violation(1, rule="CUSUM")
        await api.act(ev, "resolved", "cy", "known maintenance")
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT resolved_by = 'cy' FROM alerter_violation_actions WHERE episode_id = $1",
                ev.episode_id,
            ),
            what="the action kept",
        )
        await publish(js, ev)
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT resolved_by = 'cy' FROM alerter_alerts WHERE episode_id = $1", ev.episode_id
            ),
            what="the resolution applied to the alert",
        )
        # Resolved before any channel was told: the group closes silently, nothing is sent.
        await p.quiet()
        assert got == []


async def test_a_resolution_made_while_the_alerter_is_down_waits_in_its_stream_and_is_told_after(
    database_url: str, js: JetStreamContext
) -> None:
    async with paging(database_url, js, timings=SLOW_FLUSHES) as p:
        run, got, api = p.run, p.got, p.api
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await run.close()
        await api.act(ev, "resolved", "dee", "fixed while the alerter was down")
        run = await p.restart()
        await eventually(lambda: len(got) >= 2, within=10, what="the hand resolution's message")
        assert got[1].title.startswith("[LLMscope] RESOLVED by dee:"), got[1].title
        assert "fixed while the alerter was down" in got[1].text
        assert len(got) == 2


def resolved_state(ev: ViolationEvent, seq: int, note: str | None) -> ViolationActionEvent:
    """The episode's state at the API after its ``seq``-th action: resolved by bo at T0 + 1 min."""
    at = T0 + timedelta(minutes=1)
    return ViolationActionEvent(
        id=action_id(ev.episode_id, "resolved", note, seq),
        ts=at,
        action="resolved",
        violation_id=ev.episode_id,
        episode_id=ev.episode_id,
        provider=ev.provider,
        model=ev.model,
        acknowledged_by="bo",
        acknowledged_at=at,
        resolved_by="bo",
        resolved_at=at,
        note=note,
        seq=seq,
    )


async def test_a_newer_note_on_a_hand_resolution_replaces_the_one_the_alert_shows(
    database_url: str, js: JetStreamContext
) -> None:
    """The note is copied when the API's resolution resolves the alert; a person's later note
    (a newer action event) replaces it in the alert's record, which later messages are built
    from. The note alone sends nothing: the channels were told of the resolution."""
    note_of = "SELECT resolved_note FROM alerter_alerts WHERE episode_id = $1"
    async with paging(database_url, js) as p:
        run, got, api = p.run, p.got, p.api
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        await api.publish_action(resolved_state(ev, 1, "looking"))
        await eventually(lambda: len(got) >= 2, within=10, what="the hand resolution's message")
        assert "looking" in got[1].text
        assert await run.pool.fetchval(note_of, ev.episode_id) == "looking"
        await api.publish_action(resolved_state(ev, 2, "restarted ollama"))
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT seq = 2 FROM alerter_violation_actions WHERE episode_id = $1", ev.episode_id
            ),
            what="the newer action stored",
        )
        assert await run.pool.fetchval(note_of, ev.episode_id) == "restarted ollama"
        await p.quiet()
        assert await run.pool.fetchval(note_of, ev.episode_id) == "restarted ollama"
        assert len(got) == 2, [g.title for g in got]


def note_state(ev: ViolationEvent, seq: int, note: str, at: datetime) -> ViolationActionEvent:
    """The episode resolved by bo at ``at`` with ``note``: the API's ``seq``-th action on it."""
    return structs.replace(resolved_state(ev, seq, note), ts=at, resolved_at=at, acknowledged_at=at)


INCIDENT_NOTE = "SELECT resolved_note, revision FROM alerter_incidents WHERE id = $1"


async def test_an_incident_shows_the_latest_note_on_its_violations_as_their_alerts_do(
    database_url: str, js: JetStreamContext
) -> None:
    """A violation resolved through the API with a note, a newer note, then the engine's clear:
    the alert showed the newer note and the incident, resolved by the clear, showed none. It
    shows the latest by time, and a later one replaces it (an ``updated`` incident event)."""
    async with paging(database_url, js) as p:
        run, got, api = p.run, p.got, p.api
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        incident_id = got[0].incident_id
        now = datetime.now(UTC)
        await api.publish_action(note_state(ev, 1, "looking", now))
        await api.publish_action(note_state(ev, 2, "restarted ollama", now + timedelta(seconds=1)))
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT seq = 2 FROM alerter_violation_actions WHERE episode_id = $1", ev.episode_id
            ),
            what="the newer action stored",
        )
        await publish(js, cleared(ev))

        async def note() -> str | None:
            row = await run.pool.fetchrow(INCIDENT_NOTE, incident_id)
            return None if row is None else row["resolved_note"]

        await eventually(lambda: run.pool.fetchval(
            "SELECT state = 'resolved' FROM alerter_incidents WHERE id = $1", incident_id
        ), what="the incident resolved by the clear")  # fmt: skip
        assert await note() == "restarted ollama"
        # The "resolved" event carries it: the API's incident page shows it.
        [resolved] = [e for e in await incident_events(run, incident_id) if e.change == "resolved"]
        assert resolved.resolved_note == "restarted ollama"

        await api.publish_action(note_state(ev, 3, "the GPU driver, not ollama", now + timedelta(seconds=2)))
        await eventually(
            lambda: note_is(run, incident_id, "the GPU driver, not ollama"), what="the newer note"
        )
        updated = [e for e in await incident_events(run, incident_id) if e.change == "updated"]
        assert [e.resolved_note for e in updated] == ["the GPU driver, not ollama"]


async def note_is(run: Any, incident_id: str, want: str) -> bool:
    return bool(await run.pool.fetchval(INCIDENT_NOTE.replace(", revision", ""), incident_id) == want)


async def test_a_later_note_on_a_violation_replaces_the_incidents_own_but_an_older_one_does_not(
    database_url: str, js: JetStreamContext
) -> None:
    async with paging(database_url, js) as p:
        run, got, api = p.run, p.got, p.api
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: len(got) >= 1, what="the page")
        incident_id = got[0].incident_id
        before = datetime.now(UTC) - timedelta(minutes=1)
        assert await run.store.resolve_incident(incident_id, "ana", "restarted ollama")
        # A note written before the incident's resolution (delivered late) does not replace it.
        await api.publish_action(note_state(ev, 1, "looking", before))
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT seq = 1 FROM alerter_violation_actions WHERE episode_id = $1", ev.episode_id
            ),
            what="the older action stored",
        )
        assert await note_is(run, incident_id, "restarted ollama")
        await api.publish_action(
            note_state(ev, 2, "the GPU driver", datetime.now(UTC) + timedelta(seconds=1))
        )
        await eventually(lambda: note_is(run, incident_id, "the GPU driver"), what="the later note")


async def test_a_new_violation_after_a_hand_resolution_pages_again_while_the_first_still_fires(
    database_url: str, js: JetStreamContext
) -> None:
    """Like Alertmanager's resolved alert that fires again: a person resolved the incident while
    its CUSUM was still out of control; the chart then goes beyond its limits (a new episode of
    the same model): that is a new page, in a new incident, not news folded into the closed one."""
    async with paging(database_url, js) as p:
        run, got = p.run, p.got
        shift = violation(1, rule="CUSUM")
        await publish(js, shift)
        await eventually(lambda: len(got) >= 1, what="the page")
        first = got[0].incident_id
        assert await run.store.resolve_incident(first, "ana", "restarted")
        await eventually(lambda: len(got) >= 2, what="the hand resolution's message")
        worse = violation(2, rule="R1", value=4000.0)
        await publish(js, worse)
        await eventually(lambda: len(got) >= 3, what="a new page")
        page = got[2]
        assert page.status == "firing"
        assert page.reason == "first"
        assert page.incident_id != first
