"""Alertmanager: every payload is a valid postableAlerts; a whole alerter's firing alert arrives
with the violation's labels, is re-sent while it fires and ends (``endsAt``) when it clears."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from nats.js import JetStreamContext

from llmscope.alerter.notifiers.alertmanager import alerts_url
from tests.alerter.alertmanager_api import FakeAlertmanager, validate_postable_alerts
from tests.alerter.factories import cleared, violation
from tests.alerter.harness import eventually, publish, start_alerter
from tests.alerter.test_messages import CASES, for_alertmanager, rendered


@pytest.mark.parametrize("case", CASES)
def test_every_alertmanager_payload_is_a_valid_postable_alerts(case: str) -> None:
    body = json.loads(rendered(case)["alertmanager.json"])
    assert validate_postable_alerts(body) == []
    n = for_alertmanager(case)
    assert len(body) == len(n.alerts)  # one Alertmanager alert per violation
    ends = ["endsAt" in a for a in body]
    # resolved ones end when they cleared (or were merged away); firing ones stay open (a test
    # ends by itself)
    assert ends == [case == "test"] * len(n.firing) + [True] * len(n.resolved)
    if case == "merged":
        assert body[0]["labels"]["incident"] == "inc-v1"  # the absorbed incident's alert ends
        assert body[0]["annotations"]["merged_into"] == "inc-v0"


def test_the_schema_checks_reject_what_alertmanager_rejects() -> None:
    ok = {"labels": {"alertname": "A"}, "startsAt": "2026-03-02T12:00:00Z"}
    assert validate_postable_alerts([ok]) == []
    bad = [
        {},  # labels required
        {"labels": {}},  # at least one label
        {"labels": {"alertname": "A", "bad-name": "x"}},
        {"labels": {"alertname": "A", "n": 1}},
        {**ok, "endsAt": "2026-03-02T11:00:00Z"},  # ends before it starts
        {**ok, "startsAt": "yesterday"},
        {**ok, "generatorURL": "/relative"},
        {**ok, "status": "firing"},  # not in the spec: silently dropped by Alertmanager
    ]
    for alert in bad:
        assert validate_postable_alerts([alert]) != [], alert
    assert validate_postable_alerts(ok) != []  # an object, not an array


def test_the_url_may_be_the_base_or_the_endpoint() -> None:
    assert alerts_url("http://am:9093") == "http://am:9093/api/v2/alerts"
    assert alerts_url("http://am:9093/") == "http://am:9093/api/v2/alerts"
    assert alerts_url("http://am:9093/api/v2/alerts") == "http://am:9093/api/v2/alerts"


@pytest.fixture
async def am() -> AsyncIterator[FakeAlertmanager]:
    server = FakeAlertmanager()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_firing_is_resent_while_it_fires_and_resolved_with_ends_at(
    database_url: str, js: JetStreamContext, am: FakeAlertmanager
) -> None:
    env = {"LLMSCOPE_ALERTMANAGER_URL": am.sink.url, "LLMSCOPE_ALERTMANAGER_RESEND_S": "1"}
    run = await start_alerter(database_url, js, env)
    try:
        ev = violation(1, model="llama3.1:8b", rule="CUSUM")
        await publish(js, ev)
        await eventually(lambda: bool(am.alerts), what="the firing alert")
        ((key, alert),) = am.alerts.items()
        incident = await run.pool.fetchval("SELECT id FROM alerter_incidents")
        assert alert.labels == {
            "alertname": "LLMscopeViolation",
            "provider": "ollama",
            "model": "llama3.1:8b",
            "prompt": "simple-1",
            "metric": "latency_ms",
            "rule": "CUSUM",
            "severity": "critical",
            "host": "gpu-1",
            "incident": incident,
        }
        first = am.posts[0][0]
        assert "endsAt" not in first  # open until re-sent or resolved
        assert first["annotations"]["violation_url"] == f"http://scope.test/violations/{ev.episode_id}"
        assert first["annotations"]["incident_url"] == f"http://scope.test/incidents/{incident}"
        assert "slower" in first["annotations"]["summary"]
        assert first["generatorURL"].startswith("http://scope.test/?provider=ollama")

        # Re-sent every second while firing, with the same labels and still no end.
        await eventually(lambda: am.alerts[key].posts >= 3, what="two re-sends")
        assert all("endsAt" not in post[0] for post in am.posts)
        assert am.alerts[key].ends_at is None

        done = cleared(ev)
        await publish(js, done)
        await eventually(lambda: am.alerts[key].ends_at is not None, what="the resolved alert")
        assert am.alerts[key].ends_at == done.ts
        assert len(am.alerts) == 1  # the same alert (same labels) ended, no second one
        assert am.rejected == []

        # The log records the two notifications, not the re-sends.
        # (The resolved one is recorded as sent just after Alertmanager has it: wait for the row.)
        async def logged() -> bool:
            rows = await run.pool.fetch(
                "SELECT reason, status FROM alerter_notifications WHERE channel = 'alertmanager' ORDER BY seq"
            )
            return [(r["reason"], r["status"]) for r in rows] == [("first", "sent"), ("resolved", "sent")]

        await eventually(logged, what="both notifications recorded as sent")
        # Once resolved, the group closes and nothing is re-sent (counted from the close: the
        # background re-send may still post once while the group is closing).
        await eventually(
            lambda: run.pool.fetchval("SELECT bool_and(state = 'closed') FROM alerter_groups"),
            what="the group closed",
        )
        posts = len(am.posts)
        assert await run.alerter.resend_once() == 0
        assert len(am.posts) == posts
    finally:
        await run.close()
