"""One degradation pages once: a model's warnings and its critical share the incident's thread.

Real NATS, Postgres, a local webhook server, a Slack-format API and an SMTP server (aiosmtpd);
the severities notified are warning and above (``alert.min_severity: warning``), so both tiers
reach the channel.
"""

from __future__ import annotations

from datetime import timedelta

from nats.js import JetStreamContext

from llmscope.alerter.config import Timings
from tests.alerter.factories import Mailbox, cleared, smtp_server, violation, webhook_sink
from tests.alerter.flushes import all_flushed_after, nothing_in_flight
from tests.alerter.harness import Running, eventually, publish, start_alerter
from tests.alerter.test_chat_channels import TOKEN, SlackApi


async def _quiet(run: Running, interval: float) -> None:
    """Every group flushed after now and nothing in flight: all that will be sent was sent."""
    moment = run.store.clock()
    await eventually(lambda: all_flushed_after(run.pool, moment, interval), what="a flush after now")
    await eventually(lambda: nothing_in_flight(run.pool), what="nothing in flight")


async def test_a_pending_warning_is_folded_into_the_critical_of_the_same_model(
    database_url: str, js: JetStreamContext
) -> None:
    sink, got = await webhook_sink()
    timings = Timings(group_wait=1.5, group_interval=0.2, repeat_interval=3600)
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=timings,
        severities=("critical", "warning"),
    )
    try:
        warning = violation(1, rule="EWMA", severity="warning", metric="tokens_per_s", value=20.0)
        critical = violation(2, rule="CUSUM", metric="latency_ms", value=2400.0)
        await publish(js, warning)
        # The critical comes while the warning's group still waits (group_wait 1.5 s).
        await eventually(
            lambda: run.pool.fetchval("SELECT count(*) FROM alerter_groups"), what="the warning's group"
        )
        await publish(js, critical)
        await eventually(lambda: len(got) >= 1, what="the page")
        await _quiet(run, timings.group_interval)
        assert len(got) == 1, [g.title for g in got]
        page = got[0]
        assert page.title.startswith("[LLMscope] CRITICAL: 2 violations"), page.title
        assert "latency" in page.title.split(":", 2)[2], page.title  # the critical leads
        assert {v.episode_id for v in page.firing} == {warning.episode_id, critical.episode_id}
        assert page.incident_id
    finally:
        await run.close()
        await sink.stop()


async def test_a_warning_already_sent_is_referred_to_by_the_critical_and_resolved_once(
    database_url: str, js: JetStreamContext
) -> None:
    sink, got = await webhook_sink()
    timings = Timings(group_wait=0.3, group_interval=0.2, repeat_interval=3600)
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=timings,
        severities=("critical", "warning"),
    )
    try:
        warning = violation(1, rule="EWMA", severity="warning", metric="tokens_per_s", value=20.0)
        critical = violation(9, rule="CUSUM", metric="latency_ms", value=2400.0)
        await publish(js, warning)
        await eventually(lambda: len(got) >= 1, what="the warning")
        assert got[0].title.startswith("[LLMscope] WARNING"), got[0].title
        await publish(js, critical)
        await eventually(lambda: len(got) >= 2, what="the critical")
        page = got[1]
        assert page.reason == "new_violations", page.reason  # an escalation, not a second first page
        assert page.title.startswith("[LLMscope] CRITICAL"), page.title
        assert "(follows the message of" in page.title, page.title
        assert "Already sent" in page.text, page.text
        assert "warning message of" in page.text, page.text
        assert page.text.count("How sure:") == 1, page.text  # the warning is not repeated in full
        await publish(js, cleared(warning, critical.ts + timedelta(seconds=5)))
        await publish(js, cleared(critical, critical.ts + timedelta(seconds=6)))

        async def closed() -> bool:
            n = await run.pool.fetchval("SELECT count(*) FROM alerter_groups WHERE state = 'active'")
            return int(n) == 0

        await eventually(closed, what="every group closed")
        await _quiet(run, timings.group_interval)
        resolved = [g for g in got if g.status == "resolved"]
        assert len(resolved) == 1, [g.title for g in got]
        assert {v.episode_id for v in resolved[0].resolved} == {warning.episode_id, critical.episode_id}
        assert len(got) == 3, [g.title for g in got]
    finally:
        await run.close()
        await sink.stop()


async def test_a_warning_after_the_critical_is_news_in_the_incident_thread(
    database_url: str, js: JetStreamContext
) -> None:
    sink, got = await webhook_sink()
    timings = Timings(group_wait=0.3, group_interval=0.2, repeat_interval=3600)
    run = await start_alerter(
        database_url,
        js,
        {"LLMSCOPE_WEBHOOK_URL": sink.url + "/hook"},
        timings=timings,
        severities=("critical", "warning"),
    )
    try:
        critical = violation(1, rule="CUSUM", metric="latency_ms", value=2400.0)
        await publish(js, critical)
        await eventually(lambda: len(got) >= 1, what="the critical")
        warning = violation(2, rule="EWMA", severity="warning", metric="tokens_per_s", value=20.0)
        await publish(js, warning)
        await eventually(lambda: len(got) >= 2, what="the update")
        await _quiet(run, timings.group_interval)
        assert len(got) == 2, [g.title for g in got]
        update = got[1]
        assert update.incident_id == got[0].incident_id
        assert update.reason == "new_violations"
        assert not update.title.startswith("[LLMscope] WARNING"), update.title
    finally:
        await run.close()
        await sink.stop()


async def test_the_critical_replies_in_the_slack_thread_its_warning_started(
    database_url: str, js: JetStreamContext
) -> None:
    slack = SlackApi()
    await slack.sink.start()
    env = {
        "LLMSCOPE_SLACK_BOT_TOKEN": TOKEN,
        "LLMSCOPE_SLACK_CHANNEL": "C0ONCALL",
        "LLMSCOPE_SLACK_API_URL": slack.sink.url + "/api",
    }
    run = await start_alerter(database_url, js, env, severities=("critical", "warning"))
    try:
        await publish(js, violation(1, rule="EWMA", severity="warning", metric="tokens_per_s", value=20.0))
        await eventually(lambda: len(slack.issued) >= 1, what="the warning")
        root = slack.issued[0]
        await publish(js, violation(9, rule="CUSUM", metric="latency_ms", value=2400.0))
        await eventually(lambda: len(slack.issued) >= 2, what="the critical")
        critical = slack.bodies()[1]
        assert critical["thread_ts"] == root
        assert "CRITICAL" in critical["text"]
    finally:
        await run.close()
        await slack.sink.stop()


async def test_the_critical_email_replies_to_its_warning_and_the_group_carries_the_thread_on(
    database_url: str, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    env = {
        "LLMSCOPE_SMTP_HOST": "127.0.0.1",
        "LLMSCOPE_SMTP_PORT": str(smtp.port),
        "LLMSCOPE_SMTP_SECURITY": "none",
        "LLMSCOPE_SMTP_FROM": "scope@example.com",
        "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com",
    }
    timings = Timings(group_wait=0.3, group_interval=0.2, repeat_interval=3600)
    run = await start_alerter(database_url, js, env, timings=timings, severities=("critical", "warning"))
    try:
        warning = violation(1, rule="EWMA", severity="warning", metric="tokens_per_s", value=20.0)
        critical = violation(9, rule="CUSUM", metric="latency_ms", value=2400.0)
        await publish(js, warning)
        await eventually(lambda: len(box.messages) >= 1, what="the warning's email")
        first = box.messages[0]
        assert first["Subject"].startswith("[LLMscope] WARNING"), first["Subject"]
        assert first["In-Reply-To"] is None
        await publish(js, critical)
        await eventually(lambda: len(box.messages) >= 2, what="the critical's email")
        page = box.messages[1]
        assert page["Subject"].startswith("[LLMscope] CRITICAL"), page["Subject"]
        assert page["In-Reply-To"] == first["Message-ID"]
        assert page["References"] == first["Message-ID"]

        await publish(js, cleared(warning, critical.ts + timedelta(seconds=5)))
        await publish(js, cleared(critical, critical.ts + timedelta(seconds=6)))
        await eventually(lambda: len(box.messages) >= 3, what="the resolved email")
        resolved = box.messages[2]
        assert resolved["Subject"].startswith("[LLMscope] RESOLVED"), resolved["Subject"]
        # A reply to the critical, in the thread the warning started.
        assert resolved["In-Reply-To"] == page["Message-ID"]
        assert resolved["References"].split() == [first["Message-ID"], page["Message-ID"]]
        await _quiet(run, timings.group_interval)
        assert len(box.messages) == 3, [m["Subject"] for m in box.messages]
    finally:
        await run.close()
        smtp.stop()
