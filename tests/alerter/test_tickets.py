"""Tickets for critical incidents in GitHub Issues, Jira (v2 and v3) and GitLab.

Every test runs the alerter against a local tracker that checks each request (credential header,
path, JSON body; tests/alerter/trackers.py) and answers like the real API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from msgspec import structs
from nats.js import JetStreamContext

from llmscope.alerter.settings import AlerterSettings
from llmscope.alerter.tickets import text
from llmscope.alerter.tickets.base import TicketConfig
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.proto.incident import IncidentEvent, ResembledIncident, TicketRef
from tests.alerter.factories import T0, cleared, violation
from tests.alerter.harness import Running, eventually, publish, start_alerter
from tests.alerter.paging import incident_events
from tests.alerter.trackers import TOKEN, FakeGitHub, FakeGitLab, FakeJira


def config(kind: str, url: str, project: str, **kw: Any) -> TicketConfig:
    return TicketConfig(
        kind=kind,  # type: ignore[arg-type]
        url=url,
        project=project,
        token=Secret(TOKEN),
        wait_s=30,
        timeout_s=2,
        retry_initial_s=0.1,
        **kw,
    )


async def incident_of(run: Running) -> IncidentEvent:
    iid = await run.pool.fetchval("SELECT id FROM alerter_incidents ORDER BY opened_at LIMIT 1")
    event = await run.store.incident(iid)
    assert event is not None
    return event


async def ticket_of(run: Running) -> TicketRef | None:
    """The ticket stored on the first incident; None while there is neither."""
    if await run.pool.fetchval("SELECT count(*) FROM alerter_incidents") == 0:
        return None
    return (await incident_of(run)).ticket


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {getattr(r, 'ctx', '')}" for r in caplog.records)


async def test_github_one_ticket_per_incident_comments_updates_and_closes_on_resolution(
    database_url: str, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gh = FakeGitHub()
    url = await gh.start()
    cfg = config("github", url, "acme/llm")
    first = violation(1, rule="CUSUM")
    run = await start_alerter(database_url, js, {}, tickets=cfg)
    try:
        await publish(js, first)
        await eventually(lambda: len(gh.issues) == 1, what="the ticket")
        issue = gh.issues["1"]
        inc = await incident_of(run)
        assert issue.title == f"[LLMscope] CRITICAL: {inc.title}"
        assert issue.labels == ["llmscope"]
        assert f"<!-- llmscope-incident-{inc.incident_id} -->" in issue.body
        assert f"http://scope.test/incidents/{inc.incident_id}" in issue.body
        assert inc.analysis is not None
        assert inc.analysis.summary.splitlines()[0] in issue.body  # the written analysis is the body

        # The ticket's id and link are stored on the incident (and published with it).
        async def ticket_stored() -> bool:
            return await ticket_of(run) is not None

        await eventually(ticket_stored, what="the ticket on the incident")
        ticket = (await incident_of(run)).ticket
        assert ticket is not None
        assert (ticket.tracker, ticket.key, ticket.state) == ("github", "1", "open")
        assert ticket.url == "https://github.example/acme/llm/issues/1"

        # More violations: a comment, never a second ticket.
        await publish(js, violation(2, rule="CUSUM"))
        await eventually(lambda: len(issue.comments) == 1, what="the update comment")
        assert "2 violations so far (1 new)." in issue.comments[0]
        assert "### Analysis" in issue.comments[0]
    finally:
        await run.close()
    # A restart: the new process finds the ticket stored, opens none, and still follows it.
    run = await start_alerter(database_url, js, {}, tickets=cfg)
    try:
        await publish(js, violation(3, rule="CUSUM"))
        await eventually(lambda: len(issue.comments) == 2, what="a comment after the restart")
        assert "3 violations so far (1 new)." in issue.comments[1]
        inc = await incident_of(run)
        assert await run.store.resolve_incident(inc.incident_id, "ana", "rolled back the driver")
        await eventually(lambda: issue.state == "closed", what="the ticket closed")
        assert "Resolved after" in issue.comments[-1]
        assert "by ana" in issue.comments[-1]
        assert "Resolution note: rolled back the driver" in issue.comments[-1]
        assert len(issue.comments) == 3

        async def closed_on_incident() -> bool:
            t = (await incident_of(run)).ticket
            return t is not None and t.state == "closed"

        await eventually(closed_on_incident, what="the closed ticket on the incident")
        # Later violations clearing change nothing on the closed ticket.
        await publish(js, cleared(first))
        await eventually(
            lambda: run.pool.fetchval(
                "SELECT cleared_at IS NOT NULL FROM alerter_alerts WHERE episode_id = $1", first.episode_id
            ),
            what="the clear recorded",
        )
        assert await run.alerter.tickets.run_once() is False  # type: ignore[union-attr]
    finally:
        await run.close()
        await gh.stop()
    assert len(gh.issues) == 1
    assert gh.problems == []
    assert [m for m, _ in gh.requests].count("POST") == 4  # one issue, three comments
    assert TOKEN not in logged_text(caplog)


@pytest.mark.parametrize("api", [2, 3])
async def test_jira_lost_create_answer_is_found_by_label_then_commented_and_transitioned_to_done(
    database_url: str, js: JetStreamContext, api: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    jira = FakeJira(api=api)
    jira.lose_creates = 1  # the issue is created but the answer never arrives (a 502)
    url = await jira.start()
    cfg = config("jira", url, "OPS", user="ops@acme.example", jira_api=api)
    first = violation(1, rule="CUSUM")
    run = await start_alerter(database_url, js, {}, tickets=cfg)
    try:
        await publish(js, first)
        await eventually(lambda: len(jira.issues) == 1, what="the ticket")

        async def recorded() -> bool:
            return await ticket_of(run) is not None

        await eventually(recorded, what="the ticket found again and recorded")
        inc = await incident_of(run)
        assert inc.ticket is not None
        assert (inc.ticket.key, inc.ticket.url) == ("OPS-1", f"{url}/browse/OPS-1")
        marker = text.marker_for(inc.incident_id)
        issue = jira.issues["OPS-1"]
        assert issue.labels == ["llmscope", marker]
        searches = [p for m, p in jira.requests if m == "GET" and "/search" in p]
        assert len(searches) == 1  # after the lost answer, before any second create
        assert inc.analysis is not None
        assert inc.analysis.summary.splitlines()[0] in FakeJira.text_of(issue.body)

        await publish(js, violation(2, rule="CUSUM"))
        await eventually(lambda: len(issue.comments) == 1, what="the update comment")
        assert "2 violations so far (1 new)." in FakeJira.text_of(issue.comments[0])
        # Every violation clears: the incident resolves, the ticket is commented and done.
        await publish(js, cleared(first), cleared(violation(2, rule="CUSUM")))
        await eventually(lambda: issue.state == "done", what="the ticket transitioned to done")
        assert "Resolved after" in FakeJira.text_of(issue.comments[-1])
        assert "llmscope (all violations cleared)" in FakeJira.text_of(issue.comments[-1])
    finally:
        await run.close()
        await jira.stop()
    assert len(jira.issues) == 1
    assert jira.problems == []
    assert TOKEN not in logged_text(caplog)


async def test_gitlab_ticket_is_opened_noted_and_closed(database_url: str, js: JetStreamContext) -> None:
    gl = FakeGitLab()
    gl.lose_creates = 1
    url = await gl.start()
    run = await start_alerter(database_url, js, {}, tickets=config("gitlab", f"{url}/api/v4", "acme/llm"))
    try:
        first = violation(1, rule="CUSUM")
        await publish(js, first)

        async def recorded() -> bool:
            return await ticket_of(run) is not None

        await eventually(recorded, what="the ticket recorded")
        await publish(js, cleared(first))
        await eventually(lambda: gl.issues["1"].state == "closed", what="the ticket closed")
        assert "Resolved after" in gl.issues["1"].comments[-1]
    finally:
        await run.close()
        await gl.stop()
    assert len(gl.issues) == 1
    assert gl.problems == []


async def test_an_incident_resolved_before_its_ticket_was_opened_gets_none(
    database_url: str, js: JetStreamContext
) -> None:
    gh = FakeGitHub()
    url = await gh.start()
    cfg = config("github", url, "acme/llm")
    run = await start_alerter(database_url, None, {}, tickets=cfg)
    try:
        assert run.alerter.tickets is not None
        run.stop.set()  # no loops: this test drives the worker by hand
        routes = (await run.alerter.runtime()).routes
        first = violation(1, severity="critical")
        warn = violation(2, model="qwen2:7b", host="gpu-2", severity="warning")
        await run.store.ingest([first, warn], routes, None)
        await run.store.ingest([cleared(first)], routes, None)
        await run.alerter.analyze_once()
        assert await run.alerter.tickets.run_once() is False  # resolved before: no row, no call
        assert gh.requests == []
    finally:
        await run.close()
        await gh.stop()


async def test_a_tracker_error_is_retried_with_backoff_and_recorded(database_url: str) -> None:
    gh = FakeGitHub()
    url = await gh.start()
    run = await start_alerter(database_url, None, {}, tickets=config("github", url, "acme/wrong"))
    try:
        run.stop.set()
        routes = (await run.alerter.runtime()).routes
        await run.store.ingest([violation(1)], routes, None)
        await run.alerter.analyze_once()
        assert run.alerter.tickets is not None
        assert await run.alerter.tickets.run_once() is True
        row = await run.pool.fetchrow("SELECT * FROM alerter_incident_tickets")
        assert row is not None
        assert row["state"] == "pending"
        assert row["attempts"] == 1
        assert "HTTP 404" in row["last_error"]
        assert TOKEN not in row["last_error"]
        assert row["next_try_at"] > row["updated_at"]  # not again at once
        assert row["lease_until"] is None
    finally:
        await run.close()
        await gh.stop()


def test_ticket_text_reuses_the_analysis_notice_and_the_resembled_resolution() -> None:
    from llmscope.proto.incident import IncidentAnalysis

    ev = IncidentEvent(
        id="inc-1:3",
        ts=T0,
        incident_id="inc-1",
        revision=3,
        change="analyzed",
        state="open",
        title="ollama/llama3.1:8b on gpu-1: latency_ms out of control (CUSUM)",
        severity="critical",
        provider="ollama",
        host="gpu-1",
        models=("llama3.1:8b",),
        violation_count=2,
        opened_at=T0,
        analysis=IncidentAnalysis(
            summary="latency up 85 %",
            llm_status="ok",
            hypothesis="a co-tenant job",
            customer_notice="Some answers are slower; we are on it.",
        ),
        resembles=ResembledIncident(
            incident_id="inc-0",
            title="the same, last week",
            score=0.9,
            resolved_by="ana",
            resolved_note="restart",
        ),
    )
    body = text.markdown(text.body(ev, "https://scope.example/"), "llmscope-incident-inc-1")
    for part in (
        "### What happened\n\nlatency up 85 %",
        "### Likely cause\n\na co-tenant job",
        "### Draft customer notice\n\nSome answers are slower; we are on it.",
        "### Seen before\n\nthe same, last week (resolved - by ana): https://scope.example/incidents/inc-0",
        "Resolution note: restart",
        "Incident: https://scope.example/incidents/inc-1",
        "<!-- llmscope-incident-inc-1 -->",
    ):
        assert part in body
    told = text.snapshot(ev)
    assert text.update_comment(told, ev) is None  # nothing new: no comment
    acked = structs.replace(ev, acknowledged_by="bo", acknowledged_at=T0, acknowledged_note="on it")
    comment = text.markdown(text.update_comment(told, acked) or [])
    assert "Acknowledged by bo at 2026-03-02 12:00 UTC: on it" in comment
    done = structs.replace(ev, state="resolved", resolved_at=T0 + timedelta(minutes=75), resolved_by="bo")
    assert "Resolved after 1 h 15 min by bo" in text.markdown(text.resolution_comment(done))
    assert text.marker_for("inc-a:b c") == "llmscope-incident-inc-a_b_c"
    long = structs.replace(ev, title="x" * 400)
    assert len(text.title(long)) == text.TITLE_MAX


@pytest.mark.parametrize(
    ("env", "check"),
    [
        ({}, lambda c: c is None),
        (
            {
                "LLMSCOPE_TICKETS_TRACKER": "github",
                "LLMSCOPE_TICKETS_PROJECT": "a/b",
                "LLMSCOPE_TICKETS_TOKEN": "t",
            },
            lambda c: (
                (c.kind, c.url, c.labels, c.min_severity)
                == ("github", "https://api.github.com", ("llmscope",), "critical")
            ),
        ),
        (
            {
                "LLMSCOPE_TICKETS_TRACKER": "jira",
                "LLMSCOPE_TICKETS_URL": "https://acme.atlassian.net",
                "LLMSCOPE_TICKETS_PROJECT": "OPS",
                "LLMSCOPE_TICKETS_TOKEN": "t",
                "LLMSCOPE_TICKETS_USER": "ops@acme.example",
                "LLMSCOPE_TICKETS_JIRA_API": "3",
            },
            lambda c: (c.jira_api, c.user, c.jira_done) == (3, "ops@acme.example", "Done"),
        ),
    ],
)
def test_ticket_settings_from_the_environment(env: dict[str, str], check: Callable[[Any], bool]) -> None:
    settings = AlerterSettings.from_env(Env({"DATABASE_URL": "postgresql://u:p@h/db", **env}))
    assert check(settings.tickets)
    if settings.tickets is not None:
        assert repr(settings.tickets.token) != "t"
        assert "'t'" not in repr(settings.tickets)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"LLMSCOPE_TICKETS_TRACKER": "trac"}, "LLMSCOPE_TICKETS_TRACKER"),
        ({"LLMSCOPE_TICKETS_TRACKER": "github", "LLMSCOPE_TICKETS_TOKEN": "t"}, "LLMSCOPE_TICKETS_PROJECT"),
        ({"LLMSCOPE_TICKETS_TRACKER": "github", "LLMSCOPE_TICKETS_PROJECT": "ab"}, "owner/repo"),
        ({"LLMSCOPE_TICKETS_TRACKER": "github", "LLMSCOPE_TICKETS_PROJECT": "a/b"}, "LLMSCOPE_TICKETS_TOKEN"),
        (
            {
                "LLMSCOPE_TICKETS_TRACKER": "jira",
                "LLMSCOPE_TICKETS_PROJECT": "OPS",
                "LLMSCOPE_TICKETS_TOKEN": "t",
            },
            "LLMSCOPE_TICKETS_URL",
        ),
    ],
)
def test_ticket_settings_errors_name_the_variable(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        AlerterSettings.from_env(Env({"DATABASE_URL": "postgresql://u:p@h/db", **env}))


@pytest.mark.parametrize("kind", ["github", "jira", "gitlab"])
async def test_a_page_again_reopens_the_incidents_closed_ticket_once(
    database_url: str, js: JetStreamContext, kind: str
) -> None:
    """The incident is resolved by hand (its ticket commented and closed) while its violation
    still fires; paged again, the incident is open again and so is its ticket: reopened once
    (GitHub ``state=open``, GitLab ``state_event=reopen``, a Jira transition out of done) with a
    comment, never a second ticket, by one replica, and not again after a restart. Resolved
    again, it is closed again."""
    tracker: FakeGitHub | FakeJira | FakeGitLab
    if kind == "github":
        tracker = FakeGitHub()
        cfg = config("github", await tracker.start(), "acme/llm")
        closed = "closed"
    elif kind == "jira":
        tracker = FakeJira()
        cfg = config("jira", await tracker.start(), "OPS", user="ops@acme.example")
        closed = "done"
    else:
        tracker = FakeGitLab()
        cfg = config("gitlab", f"{await tracker.start()}/api/v4", "acme/llm")
        closed = "closed"
    run = await start_alerter(database_url, js, {}, tickets=cfg, repage_after_resolve=2.5)
    other = await start_alerter(database_url, js, {}, tickets=cfg, repage_after_resolve=2.5)
    try:
        ev = violation(1, rule="CUSUM")
        await publish(js, ev)

        async def ticket_open() -> bool:
            t = await ticket_of(run)
            return t is not None and t.state == "open"

        await eventually(ticket_open, what="the ticket")
        (issue,) = tracker.issues.values()
        inc = await incident_of(run)
        assert await run.store.resolve_incident(inc.incident_id, "ana", "restarted ollama")
        # Closed with the resolution; not cleared: paged again, the incident opens again, and its
        # ticket (the close is not waited for: the page again may come before a look at it).
        await eventually(lambda: issue.reopened == 1 and issue.state != closed, what="the ticket reopened")
        assert issue.closes == 1, tracker.requests
        assert any("Resolved after" in FakeJira.text_of(c) for c in issue.comments)
        await eventually(ticket_open, what="the reopened ticket on the incident")
        comment = FakeJira.text_of(issue.comments[-1])
        assert "Paged again at " in comment, comment
        assert "still failing after it was resolved by ana at " in comment, comment
        assert "LLMscope reopens this ticket." in comment
        assert (await incident_of(run)).state == "open"
        # Published so: the incident's last event says the ticket is open again (the page
        # again's own event, before the reopening, said closed).
        last = (await incident_events(run, inc.incident_id))[-1]
        assert last.state == "open"
        assert last.ticket is not None
        assert last.ticket.state == "open"
        # Once: neither replica has more to do, and after a restart neither.
        assert await run.alerter.tickets.run_once() is False  # type: ignore[union-attr]
        assert await other.alerter.tickets.run_once() is False  # type: ignore[union-attr]
        await other.close()
        other = await start_alerter(database_url, js, {}, tickets=cfg, repage_after_resolve=2.5)
        assert await other.alerter.tickets.run_once() is False  # type: ignore[union-attr]
        assert issue.reopened == 1
        assert len(tracker.issues) == 1
        assert sum("LLMscope reopens this ticket." in FakeJira.text_of(c) for c in issue.comments) == 1
        # Resolved again: commented and closed again, as any resolution.
        assert await run.store.resolve_incident(inc.incident_id, "bo", "rolled back")
        await eventually(lambda: issue.closes == 2, what="the ticket closed again")
        assert "by bo" in FakeJira.text_of(issue.comments[-1])
    finally:
        await other.close()
        await run.close()
        await tracker.stop()
    assert tracker.problems == []
    assert len(tracker.issues) == 1


async def test_an_incident_open_again_whose_ticket_was_skipped_gets_one(database_url: str) -> None:
    """Resolved by hand before its ticket was opened (skipped: none opened), then paged again, the
    engine never clearing it: the incident is open again and deserves a ticket as a new one does."""
    gh = FakeGitHub()
    url = await gh.start()
    run = await start_alerter(database_url, None, {}, tickets=config("github", url, "acme/llm"))
    try:
        assert run.alerter.tickets is not None
        run.stop.set()  # no loops: this test drives the worker by hand
        routes = (await run.alerter.runtime()).routes
        await run.store.ingest([violation(1, rule="CUSUM")], routes, None)
        await run.alerter.analyze_once()
        inc = await incident_of(run)
        assert await run.store.resolve_incident(inc.incident_id, "ana", "restarted")
        # As the worker leaves an incident resolved before its ticket was opened.
        await run.pool.execute(
            "INSERT INTO alerter_incident_tickets (incident_id, tracker, marker, state, next_try_at,"
            " created_at, updated_at) VALUES ($1, 'github', $2, 'skipped', now(), now(), now())",
            inc.incident_id,
            text.marker_for(inc.incident_id),
        )
        assert await run.alerter.tickets.run_once() is False
        assert await run.store.repage_hand_resolved(0) == 1
        assert (await incident_of(run)).state == "open"
        assert await run.alerter.tickets.run_once() is True
        assert len(gh.issues) == 1
        ticket = await ticket_of(run)
        assert ticket is not None
        assert ticket.state == "open"
        assert await run.alerter.tickets.run_once() is False
    finally:
        await run.close()
        await gh.stop()
    assert gh.problems == []
    assert len(gh.issues) == 1
