"""Whole alerter against real local servers (aiosmtpd, Slack-format and webhook sinks, a local
PagerDuty Events v2 endpoint): one cascade is one message per channel, outages carry what the
failed probes answered, the raw email is well formed, SMTP misconfiguration fails at once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp import web
from msgspec import structs
from nats.js import JetStreamContext

from llmscope.alerter.notifiers.email import EmailConfig, EmailNotifier
from llmscope.alerter.retry import DeliveryError, RetryPolicy, send_with_retry
from llmscope.proto import codec
from llmscope.proto.alert import NotificationEvent
from tests.alerter.api_side import api_side
from tests.alerter.factories import HttpSink, Mailbox, cleared, smtp_server, violation
from tests.alerter.flushes import TIMINGS, group_flushed_after, planned
from tests.alerter.harness import eventually, publish, start_alerter
from tests.alerter.test_notifiers import notification


def _env(smtp_port: int, slack: str, hook: str, pd: str) -> dict[str, str]:
    return {
        "LLMSCOPE_SMTP_HOST": "127.0.0.1",
        "LLMSCOPE_SMTP_PORT": str(smtp_port),
        "LLMSCOPE_SMTP_SECURITY": "none",
        "LLMSCOPE_SMTP_FROM": "scope@example.com",
        "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com",
        "LLMSCOPE_SLACK_WEBHOOK_URL": slack,
        "LLMSCOPE_WEBHOOK_URL": hook,
        "LLMSCOPE_PAGERDUTY_ROUTING_KEY": "R0UTING",
        "LLMSCOPE_PAGERDUTY_EVENTS_URL": pd,
    }


async def _pagerduty(request: web.Request, _: int) -> web.StreamResponse:
    """What PagerDuty's Events API v2 checks and answers (202 with a dedup_key)."""
    body = await request.json()
    if body.get("routing_key") != "R0UTING" or body.get("event_action") not in ("trigger", "resolve"):
        return web.json_response({"status": "invalid event"}, status=400)
    if body["event_action"] == "trigger":
        payload = body["payload"]
        if not all(payload.get(k) for k in ("summary", "source", "severity")):
            return web.json_response({"status": "invalid event"}, status=400)
    return web.json_response({"status": "success", "dedup_key": body["dedup_key"]}, status=202)


Sinks = tuple[Mailbox, HttpSink, HttpSink, HttpSink, dict[str, str]]
CHANNELS = ("email", "slack", "webhook", "pagerduty")


@pytest.fixture
async def sinks() -> AsyncIterator[Sinks]:
    box = Mailbox()
    smtp = smtp_server(box)
    slack, hook, pd = HttpSink(), HttpSink(), HttpSink(_pagerduty)
    urls = [await s.start() for s in (slack, hook, pd)]
    env = _env(smtp.port, urls[0] + "/slack", urls[1] + "/hook", urls[2] + "/v2/enqueue")
    try:
        yield box, slack, hook, pd, env
    finally:
        smtp.stop()
        for s in (slack, hook, pd):
            await s.stop()


async def test_a_cascade_is_one_message_per_channel_and_a_stray_spike_is_not_a_cascade(
    database_url: str, js: JetStreamContext, sinks: Sinks
) -> None:
    box, slack, hook, pd, env = sinks
    run = await start_alerter(database_url, js, env, timings=TIMINGS)
    try:
        # Now, not at the factories' past T0: a one-point episode open since long ago counts as
        # sustained, and this test needs the spike below to be fresh.
        now = datetime.now(UTC)
        a = violation(1, model="llama3.1:8b", rule="CUSUM", at=now)
        b = violation(2, model="qwen2:7b", rule="CUSUM", at=now)
        await publish(js, a, b)
        await eventually(
            lambda: all((box.messages, slack.requests, hook.requests, pd.requests)), what="one of each"
        )
        # No second message: the group flushed again since (every group_interval), and that flush,
        # which would have planned one, planned none (a plan is a notification row, written in
        # the flush's own transaction).
        ((cascade_group, first_next),) = await run.pool.fetch(
            "SELECT id, next_flush_at FROM alerter_groups WHERE state = 'active'"
        )
        await eventually(
            lambda: group_flushed_after(run.pool, cascade_group, first_next, TIMINGS.group_interval),
            what="a later flush",
        )
        assert await planned(run.pool, cascade_group) == dict.fromkeys(CHANNELS, 1)
        assert (len(box.messages), len(slack.requests), len(hook.requests), len(pd.requests)) == (1, 1, 1, 1)
        subject = box.messages[0]["Subject"]
        assert subject.startswith("[LLMscope] CRITICAL: Cascade on gpu-1: 2 models degraded")
        (incident_id,) = {r["id"] for r in await run.pool.fetch("SELECT id FROM alerter_incidents")}
        link = f"http://scope.test/incidents/{incident_id}"
        mail = box.messages[0].get_body(("plain",))
        assert mail is not None
        slack_body = slack.requests[0][1].decode()
        event = codec.decode_as(hook.requests[0][1], NotificationEvent)
        pd_body = json.loads(pd.requests[0][1])
        for text in (mail.get_content(), slack_body, event.text, json.dumps(pd_body)):
            assert "llama3.1:8b" in text
            assert "qwen2:7b" in text
            assert link in text
        assert event.incident_id == incident_id
        assert event.cascade_models == ("llama3.1:8b", "qwen2:7b")
        assert pd_body["dedup_key"] == incident_id
        assert '"color": "#D0021B"' in slack_body  # critical in red

        # A single one-point spike on a third model of the host: its own incident, no cascade,
        # and no page of its own until it is sustained (merging.py: held, then merged or told).
        spike = violation(3, model="mistral:7b", rule="SPIKE", at=now + timedelta(seconds=1))

        async def held() -> bool:
            return bool(
                await run.pool.fetchval(
                    "SELECT held_until IS NOT NULL FROM alerter_incidents WHERE 'mistral:7b' = ANY(models)"
                )
            )

        await publish(js, spike)
        await eventually(held, what="the spike's held incident")
        # Its group's first flush waits for the hold; an unheld one would have been due
        # group_wait after the group opened. The cascade's group, flushed by the same loop in
        # order of due time, flushing after that moment proves that the spike's group would have
        # been flushed by then, and it planned nothing.
        ((spike_group, opened, first_flush),) = await run.pool.fetch(
            "SELECT id, created_at, next_flush_at FROM alerter_groups WHERE id <> $1 AND state = 'active'",
            cascade_group,
        )
        held_until = await run.pool.fetchval(
            "SELECT held_until FROM alerter_incidents WHERE 'mistral:7b' = ANY(models)"
        )
        assert first_flush >= held_until
        unheld_due = opened + timedelta(seconds=TIMINGS.group_wait)
        await eventually(
            lambda: group_flushed_after(run.pool, cascade_group, unheld_due, TIMINGS.group_interval),
            what="a flush past it",
        )
        assert await planned(run.pool, spike_group) == {}
        assert (len(box.messages), len(slack.requests), len(hook.requests), len(pd.requests)) == (1, 1, 1, 1)
        rows = await run.pool.fetch("SELECT models, cascade FROM alerter_incidents ORDER BY opened_at")
        assert [(sorted(r["models"]), r["cascade"]) for r in rows] == [
            (["llama3.1:8b", "qwen2:7b"], True),
            (["mistral:7b"], False),
        ]

        # Recovery: one resolved message per channel for the cascade, threaded under the first.
        await publish(js, cleared(a), cleared(b))
        await eventually(
            lambda: any("RESOLVED: cascade" in m["Subject"] for m in box.messages), what="resolved email"
        )
        resolved = next(m for m in box.messages if "RESOLVED: cascade" in m["Subject"])
        assert resolved["In-Reply-To"] == box.messages[0]["Message-ID"]
        await eventually(
            lambda: any(json.loads(r[1]).get("event_action") == "resolve" for r in pd.requests),
            what="PagerDuty resolve",
        )
    finally:
        await run.close()


async def test_an_outage_message_carries_failed_probes_from_telemetry(
    database_url: str, js: JetStreamContext, sinks: Sinks
) -> None:
    box, slack, hook, _, env = sinks
    api = await asyncpg.connect(database_url)
    await api.execute(
        "CREATE TABLE telemetry (id text PRIMARY KEY, ts timestamptz NOT NULL, provider text, model text,"
        " target text NOT NULL DEFAULT '', prompt_id text, status text, http_status smallint, error text,"
        " latency_ms float8, ttft_ms float8, tokens_per_s float8)"
    )
    down = structs.replace(
        violation(9, rule="AVAILABILITY", metric="availability", value=3.0),
        target="gpu-1-ollama",
        prompt_id="",
    )
    t = down.ts
    rows = [("ok-1", t - timedelta(seconds=90), "ok", None, None)] + [
        (
            f"f{i}",
            t - timedelta(seconds=60 - 30 * i),
            "http_5xx",
            503,
            "Service Unavailable: model is loading",
        )
        for i in range(3)
    ]
    await api.executemany(
        "INSERT INTO telemetry (id, ts, provider, model, target, prompt_id, status, http_status, error)"
        " VALUES ($1, $2, 'ollama', 'llama3.1:8b', 'gpu-1-ollama', 'simple-1', $3, $4, $5)",
        rows,
    )
    side = await api_side(js, database_url)  # the API answers from its telemetry table
    run = await start_alerter(database_url, js, env)
    try:
        await publish(js, down)
        await eventually(lambda: all((box.messages, slack.requests, hook.requests)), what="outage messages")
        mail = box.messages[0].get_body(("plain",))
        assert mail is not None
        event = codec.decode_as(hook.requests[0][1], NotificationEvent)
        for text in (mail.get_content(), slack.requests[0][1].decode(), event.text):
            assert "http_5xx, HTTP 503: Service Unavailable: model is loading" in text
            assert "3 failed probe(s) since" in text
            assert "Last success:" in text
            assert "Sigma" not in text
            assert "Center" not in text
        assert "HTTP 503" in box.messages[0]["Subject"]
    finally:
        await run.close()
        await api.close()
        await side.close()


async def test_the_raw_email_has_one_line_subject_and_starttls_errors_are_permanent() -> None:
    box = Mailbox()
    plain = smtp_server(box)
    try:
        cfg = EmailConfig(
            host="127.0.0.1",
            port=plain.port,
            security="none",
            sender="s@example.com",
            recipients=("a@example.com",),
        )
        mail = EmailNotifier("mail", cfg)
        await mail.send(mail.build_payload(notification(1)))
        raw = box.raw[0].decode()
        (line,) = [x for x in raw.split("\r\n") if x.startswith("Subject:")]
        assert line.startswith("Subject: [LLMscope] CRITICAL: ollama/llama3.1:8b")
        assert line.endswith("(slower)")  # the whole subject on its one line, not folded
        # STARTTLS asked of a server that does not offer it: one attempt, a clear reason.
        starttls = EmailNotifier("mail", replace(cfg, security="starttls"))
        payload = starttls.build_payload(notification(1))
        with pytest.raises(DeliveryError, match="does not offer STARTTLS") as err:
            await starttls.send(payload)
        assert not err.value.retryable
        outcome = await send_with_retry(
            lambda: starttls.send(payload),
            policy=RetryPolicy(initial=0.01, deadline=2.0, attempt_timeout=2.0),
        )
        assert (outcome.status, len(outcome.attempts)) == ("failed", 1)
        tls = EmailNotifier("mail", replace(cfg, security="ssl"))
        with pytest.raises(DeliveryError, match="TLS handshake failed") as err:
            await tls.send(tls.build_payload(notification(1)))
        assert not err.value.retryable
    finally:
        plain.stop()
