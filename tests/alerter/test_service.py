"""The alerter as a service: real NATS, Postgres, SMTP and HTTP servers."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from datetime import datetime, time, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from msgspec import structs
from nats.js import JetStreamContext

from llmscope.alerter.config import RuntimeConfig, Timings, load_file
from llmscope.alerter.migrate import migrate
from llmscope.alerter.notifiers.base import Notification, Notifier
from llmscope.alerter.notifiers.webhook import DELIVERY_HEADER
from llmscope.alerter.retry import RetryPolicy
from llmscope.alerter.service import utcnow
from llmscope.alerter.silences import Silence
from llmscope.alerter.testsend import send_test
from llmscope.config.env import Env
from llmscope.proto import codec
from llmscope.proto.alert import NotificationEvent
from llmscope.proto.violation import ViolationEvent
from tests.alerter.api_side import api_side
from tests.alerter.factories import LOOPBACK_ALLOWED, HttpSink, Mailbox, cleared, smtp_server, violation
from tests.alerter.flushes import TIMINGS, all_flushed_after, nothing_in_flight, planned, settled
from tests.alerter.harness import eventually, publish, start_alerter


def smtp_env(port: int) -> dict[str, str]:
    return {
        "LLMSCOPE_SMTP_HOST": "127.0.0.1",
        "LLMSCOPE_SMTP_PORT": str(port),
        "LLMSCOPE_SMTP_SECURITY": "none",
        "LLMSCOPE_SMTP_FROM": "scope@example.com",
        "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com,lead@example.com",
    }


async def test_migrations_apply_once_even_concurrently(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(2)]
    try:
        first, second = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(first + second) == [
            "001_alerting.sql",
            "002_incidents.sql",
            "003_incident_notes.sql",
            "004_retention_indexes.sql",
            "005_claim_generation.sql",
            "006_monthly_silences.sql",
            "007_tickets_and_resemblance.sql",
            "008_channel_threads.sql",
            "009_incident_merges.sql",
            "010_attempt_state.sql",
            "011_merged_groups.sql",
            "012_folded_groups.sql",
            "013_violation_actions.sql",
            "014_violation_action_seq.sql",
            "015_violation_action_activity.sql",
            "016_latest_resolution_note.sql",
            "017_repage_after_hand_resolution.sql",
            "018_repage_told_api.sql",
        ]
        assert await migrate(conns[0]) == []
        assert await conns[0].fetchval("SELECT count(*) FROM alerter_schema_migrations") == 18
        assert await conns[0].fetchval("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'") == 1
    finally:
        for c in conns:
            await c.close()


async def _api_tables(database_url: str) -> asyncpg.Connection:
    """The slice of the API's schema its telemetry answers read (the alerter reads none of it:
    it asks the API over the bus, tests.alerter.api_side)."""
    conn = await asyncpg.connect(database_url)
    await conn.execute(
        "CREATE TABLE telemetry (id text PRIMARY KEY, ts timestamptz NOT NULL, provider text, model text,"
        " prompt_id text, status text, latency_ms float8, ttft_ms float8, tokens_per_s float8,"
        " target text NOT NULL DEFAULT '', http_status smallint, error text)"
    )
    return conn


async def test_alert_storm_one_message_then_reminders_until_acknowledged(
    database_url: str, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    api = await api_side(js)
    db = await asyncpg.connect(database_url)
    storm = [violation(i) for i in range(50)]
    # The alerter's clock stands still until the whole storm is recorded: however slowly a loaded
    # machine takes it in, the group's first flush (group_wait after its first violation) finds
    # all of it, as it would a storm arriving within group_wait.
    paused: list[datetime | None] = [utcnow()]
    # (The checks below read the group_interval and repeat_interval.)
    run = await start_alerter(
        database_url,
        js,
        smtp_env(smtp.port),
        timings=Timings(group_wait=1.0, group_interval=0.2, repeat_interval=1.0),
        clock=lambda: paused[0] or utcnow(),
    )
    try:
        await publish(js, *storm)  # 50 violations on one model, well within 10 s
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 50 FROM alerter_alerts"), what="the storm recorded"
        )
        paused[0] = None
        await eventually(lambda: len(box.messages) >= 1, what="the grouped email")
        first = box.messages[0]
        assert "50 violations on ollama/llama3.1:8b on gpu-1" in first["Subject"]
        assert box.envelopes[0] == ["oncall@example.com", "lead@example.com"]
        await eventually(lambda: len(box.messages) >= 3, what="two reminders")
        assert all("(reminder)" in m["Subject"] for m in box.messages[1:])
        for v in storm:  # acknowledged through the API: its events reach the alerter
            await api.act(v, "acknowledged", "ana")
        await eventually(
            lambda: db.fetchval("SELECT count(*) = 50 FROM alerter_alerts WHERE acknowledged_by = 'ana'"),
            what="the acknowledgements applied",
        )
        # A reminder planned before the acknowledgement may still be on its way: once the group
        # flushed after it, and what was planned is delivered, nothing else is in flight.
        acked = run.store.clock()
        await eventually(lambda: all_flushed_after(run.pool, acked, 0.2), what="a flush after the ack")
        await eventually(lambda: nothing_in_flight(run.pool), what="the reminders in flight delivered")
        count = len(box.messages)
        # No more reminders: the group flushed past the moment the next one was due (repeat
        # interval after the last), and that flush planned nothing.
        last = await run.pool.fetchval("SELECT max(created_at) FROM alerter_notifications")
        due = last + timedelta(seconds=1.0)
        await eventually(lambda: all_flushed_after(run.pool, due, 0.2), what="a flush past the next reminder")
        assert sum((await planned(run.pool)).values()) == count
        assert len(box.messages) == count  # acknowledged: no more reminders
        rows = await db.fetch(
            "SELECT reason, status, attempts FROM alerter_notifications ORDER BY created_at"
        )
        assert rows[0]["reason"] == "first"
        assert {r["reason"] for r in rows[1:]} == {"repeat"}
        assert all(r["status"] == "sent" and r["attempts"] == 1 for r in rows)
        acked = await db.fetchval("SELECT count(*) FROM alerter_alerts WHERE acknowledged_by = 'ana'")
        assert acked == 50
    finally:
        await run.close()
        await api.close()
        await db.close()
        smtp.stop()


async def test_two_replicas_never_send_twice(database_url: str, js: JetStreamContext) -> None:
    """Two replicas flush the same groups: each violation is told firing once and resolved once,
    however the groups' flushes fall (how many messages carry them is timing, which a loaded
    machine changes; that none is told twice is the property)."""
    sink = HttpSink()
    url = await sink.start()
    env = {"LLMSCOPE_WEBHOOK_URL": url + "/hook"}
    runs = [await start_alerter(database_url, js, env, instance=n, timings=TIMINGS) for n in ("a", "b")]
    try:
        models = [f"m{i}" for i in range(10)]
        # One host per model: ten models of one host with sustained signals at once are a cascade
        # (one incident naming all of them), not ten groups.
        events = [
            violation(i, model=m, host=f"gpu-{m}", rule=r)
            for i, m in enumerate(models)
            for r in ("R1", "R2", "R3")
        ]
        episodes = {e.episode_id for e in events}

        async def publish_until_told(kind: str, wave: list[ViolationEvent]) -> None:
            def told() -> set[str]:
                bodies = (codec.decode_as(body, NotificationEvent) for _, body, _ in sink.requests)
                return {v.episode_id for msg in bodies for v in getattr(msg, kind)}

            await publish(js, *wave)
            ids = {e.episode_id for e in wave}
            await eventually(lambda: told() >= ids, what=f"{len(ids)} violations told {kind}")

        # In waves, as a loaded machine splits them anyway: each group's first message, news of
        # more violations, some resolved while others still fire, then the rest. Each wave is told
        # before the next (a violation cleared before it was told is, rightly, never told at all).
        waves = [[e for e in events if e.rule == "R1"], [e for e in events if e.rule != "R1"]]
        for wave in waves:
            await publish_until_told("firing", wave)
        for wave in waves:
            await publish_until_told("resolved", [cleared(e) for e in wave])
        # Every group closed and every row sent: no replica has anything left to send.
        await eventually(lambda: settled(runs[0].pool), what="both replicas done")
        deliveries = [h[DELIVERY_HEADER] for h, _, _ in sink.requests]
        assert len(set(deliveries)) == len(deliveries), Counter(deliveries)  # no notification sent twice
        rows = await runs[0].pool.fetch("SELECT id, group_id, seq, status FROM alerter_notifications")
        assert sorted(r["id"] for r in rows) == sorted(deliveries)  # one row per message sent, and back
        assert {r["status"] for r in rows} == {"sent"}
        by_id = {r["id"]: r for r in rows}
        messages: dict[int, list[tuple[int, NotificationEvent]]] = {}
        for headers, body, _ in sink.requests:
            row = by_id[headers[DELIVERY_HEADER]]
            messages.setdefault(row["group_id"], []).append(
                (row["seq"], codec.decode_as(body, NotificationEvent))
            )
        # Per group, in the order its flushes planned them: a message tells the episodes that fire
        # and were not firing in the one before it, and those newly resolved. A replica that sent
        # what the other had already sent tells nothing new, or tells an episode a second time.
        told_firing: Counter[str] = Counter()
        told_resolved: Counter[str] = Counter()
        for sent in messages.values():
            sent.sort(key=lambda m: m[0])
            assert [seq for seq, _ in sent] == list(range(1, len(sent) + 1))
            before: set[str] = set()
            for _, msg in sent:
                (model,) = {v.model for v in (*msg.firing, *msg.resolved)}  # one model's incident per group
                firing = {v.episode_id for v in msg.firing}
                news = (firing - before) | {v.episode_id for v in msg.resolved}
                assert news, f"a {msg.reason} message about {model} told nothing new"
                told_firing.update(firing - before)
                told_resolved.update(v.episode_id for v in msg.resolved)
                before = firing
        assert told_firing == Counter(episodes)  # each violation told firing in exactly one message
        assert told_resolved == Counter(episodes)  # and resolved in exactly one
    finally:
        for run in runs:
            await run.close()
        await sink.stop()


async def test_lease_shorter_than_retries_still_sends_each_notification_once(
    database_url: str, js: JetStreamContext
) -> None:
    """An attempt plus its backoff outlasts the lease: the heartbeat keeps the claim, so the
    dispatcher of the same replica does not take it over and start a second delivery loop."""
    answered: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        delivery = request.headers[DELIVERY_HEADER]
        seen[delivery] += 1
        if seen[delivery] == 1:
            return web.Response(status=503, text="try later")
        await asyncio.sleep(1.2)  # a slow success: a second sender would overlap with this one
        answered[delivery] += 1
        return web.Response(text="ok")

    sink = HttpSink(behaviour)
    url = await sink.start()
    slow = RetryPolicy(initial=1.5, max_delay=1.5, jitter=0, deadline=20, attempt_timeout=2.0)
    env = {"LLMSCOPE_WEBHOOK_URL": url + "/hook"}
    run = await start_alerter(database_url, js, env, lease=1.0, retry=slow)
    try:
        # one host per model: three old single points of one host, still open, are a cascade
        await publish(js, *(violation(i, model=f"m{i}", host=f"gpu-m{i}") for i in range(3)))
        await eventually(lambda: len(answered) == 3, within=20, what="three notifications delivered")

        async def all_settled() -> bool:
            # Every row finished (no live claim to take over) and every attempt begun was answered
            # and recorded: no delivery loop, first or second, has a request left in flight.
            assert max(seen.values()) <= 2, f"a second delivery loop sent again: {seen}"
            return not await run.pool.fetchval(
                "SELECT (SELECT count(*) FROM alerter_notifications"
                "        WHERE status <> 'sent' OR lease_until IS NOT NULL)"
                " + (SELECT count(*) FROM alerter_delivery_attempts WHERE state <> 'done')"
            )

        await eventually(all_settled, within=20, what="every notification sent, every attempt recorded")
        assert dict(answered) == dict.fromkeys(answered, 1), answered
        assert dict(seen) == dict.fromkeys(seen, 2), seen
        rows = await run.pool.fetch("SELECT status, attempts, claim_gen FROM alerter_notifications")
        # claim_gen 1: the claim the flush made, never taken over by a second loop.
        assert sorted((r["status"], r["attempts"], r["claim_gen"]) for r in rows) == [("sent", 2, 1)] * 3
    finally:
        await run.close()
        await sink.stop()


async def test_resolved_message_that_expires_is_sent_on_a_later_flush(
    database_url: str, js: JetStreamContext
) -> None:
    down = False
    delivered: list[NotificationEvent] = []

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        if down:
            return web.Response(status=503, text="down")
        delivered.append(codec.decode_as(await request.read(), NotificationEvent))
        return web.Response(text="ok")

    sink = HttpSink(behaviour)
    url = await sink.start()
    run = await start_alerter(database_url, js, {"LLMSCOPE_WEBHOOK_URL": url + "/hook"})
    try:
        ev = violation(1)
        await publish(js, ev)
        await eventually(lambda: len(sink.requests) >= 1, what="the firing message")
        down = True
        await publish(js, cleared(ev))

        async def resolved_expired() -> bool:
            n = await run.pool.fetchval(
                "SELECT count(*) FROM alerter_notifications WHERE reason = 'resolved' AND status = 'expired'"
            )
            return bool(n)

        await eventually(resolved_expired, what="the resolved message expired (FAST_RETRY: 2 s)")
        down = False

        def resolved_arrived() -> bool:
            return any(ev.episode_id in {v.episode_id for v in b.resolved} for b in delivered)

        await eventually(resolved_arrived, what="the resolved message once the webhook is back")

        async def closed() -> bool:  # at the group's first flush after the resolved message
            return bool(await run.pool.fetchval("SELECT state FROM alerter_groups") == "closed")

        await eventually(closed, what="the group closed")
        # A closed group plans nothing more; what it planned is sent or given up.
        await eventually(lambda: nothing_in_flight(run.pool), what="nothing in flight")
        rows = await run.pool.fetch("SELECT reason, status FROM alerter_notifications ORDER BY seq")
        assert [r["reason"] for r in rows if r["status"] == "sent"] == ["first", "resolved"]
    finally:
        await run.close()
        await sink.stop()


async def test_redirect_loop_never_reveals_the_secret_webhook_url(
    database_url: str, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "T0001/B0002/s3cr3t-t0ken"

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": request.path}, text="moved")  # to itself

    sink = HttpSink(behaviour)
    url = await sink.start()
    env = {"LLMSCOPE_WEBHOOK_URL": f"{url}/services/{secret}"}
    caplog.set_level(logging.DEBUG)
    run = await start_alerter(database_url, js, env)
    try:
        await publish(js, violation(1))

        async def finished() -> bool:
            n = await run.pool.fetchval(
                "SELECT count(*) FROM alerter_notifications WHERE status <> 'sending'"
            )
            return bool(n)

        await eventually(finished, what="the notification finished")
        row = await run.pool.fetchrow("SELECT status, last_error, detail FROM alerter_notifications")
        assert row is not None
        details = [r["detail"] for r in await run.pool.fetch("SELECT detail FROM alerter_delivery_attempts")]
        reply = await send_test("webhook", {}, env=Env({**LOOPBACK_ALLOWED, **env}))
    finally:
        await run.close()
        await sink.stop()
    fmt = logging.Formatter()
    logged = [
        f"{r.getMessage()} {getattr(r, 'ctx', '')} {fmt.formatException(r.exc_info) if r.exc_info else ''}"
        for r in caplog.records
    ]
    assert details
    assert logged
    for text in [row["last_error"], row["detail"], *details, reply.detail, *logged]:
        assert "s3cr3t" not in str(text), text
    assert row["status"] == reply.status == "failed"  # a redirect is a misconfiguration, not followed
    assert "HTTP 302" in row["last_error"]
    assert len(sink.requests) == 2  # one each: not followed


class _Stuck:
    """A notifier whose send never returns: the process 'dies' between claim and delivery."""

    kind = "email"
    send_resolved = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered = asyncio.Event()

    def build_payload(self, notification: Notification) -> Any:
        return notification

    async def send(self, payload: Any) -> str:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_crash_between_claim_and_send_delivers_exactly_once_after_restart(
    database_url: str, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    stuck = _Stuck("email")

    def factory(name: str, runtime: RuntimeConfig, session: aiohttp.ClientSession) -> Notifier:
        return stuck

    first = await start_alerter(
        database_url, js, smtp_env(smtp.port), instance="dies", lease=1.0, factory=factory
    )
    try:
        await publish(js, violation(1))
        await asyncio.wait_for(stuck.entered.wait(), 10)
        row = await first.pool.fetchrow("SELECT status, claimed_by FROM alerter_notifications")
        assert row is not None
        assert (row["status"], row["claimed_by"]) == ("sending", "dies")
    finally:
        await first.crash()
    assert box.messages == []
    second = await start_alerter(database_url, js, smtp_env(smtp.port), instance="lives", lease=1.0)
    try:
        await eventually(lambda: len(box.messages) >= 1, what="the message after the lease expired")
        # Sent and recorded: a row is sent again only while it is still 'sending'.
        await eventually(lambda: nothing_in_flight(second.pool), what="the row recorded as sent")
        assert len(box.messages) == 1
        rows = await second.pool.fetch("SELECT id, status, claimed_by FROM alerter_notifications")
        assert [(r["status"], r["claimed_by"]) for r in rows] == [("sent", "lives")]
        assert box.messages[0]["X-LLMscope-Notification"] == rows[0]["id"]
    finally:
        await second.close()
        smtp.stop()


async def test_pagerduty_trigger_resolve_and_permanent_failure_recorded(
    database_url: str, js: JetStreamContext, tmp_path: Any
) -> None:
    pd = HttpSink(lambda r, n: _answer(202, '{"status":"success"}'))
    broken = HttpSink(lambda r, n: _answer(404, "no such hook"))
    pd_url, broken_url = await pd.start(), await broken.start()
    cfg = tmp_path / "alerter.yaml"
    cfg.write_text(
        "channels:\n"
        f"  - {{name: pager, kind: pagerduty, routing_key_env: PD_KEY, events_url: '{pd_url}/v2/enqueue'}}\n"
        f"  - {{name: gone, kind: webhook, url: '{broken_url}/hook'}}\n"
        "routes:\n  - {name: all, channels: [pager, gone], severities: [critical, warning]}\n"
    )
    run = await start_alerter(database_url, js, {"PD_KEY": "rk-123"}, config_file=load_file(cfg))
    try:
        ev = violation(1, severity="warning")
        await publish(js, ev)
        await eventually(lambda: len(pd.requests) >= 1, what="PagerDuty trigger")
        await publish(js, cleared(ev))
        await eventually(lambda: len(pd.requests) >= 2, what="PagerDuty resolve")
        trigger, resolve = (json.loads(b) for _, b, _ in pd.requests[:2])
        assert trigger["event_action"] == "trigger"
        assert trigger["routing_key"] == "rk-123"
        assert trigger["payload"]["severity"] == "warning"
        assert resolve == {"event_action": "resolve", "dedup_key": ev.episode_id, "routing_key": "rk-123"}
        assert trigger["dedup_key"] == ev.episode_id
        await eventually(lambda: len(broken.requests) >= 2, what="webhook attempts")

        async def both_recorded() -> bool:
            n = await run.pool.fetchval(
                "SELECT count(*) FROM alerter_notifications WHERE channel = 'gone' AND status <> 'sending'"
            )
            return bool(n == 2)

        await eventually(both_recorded, what="both webhook failures recorded")
        rows = await run.pool.fetch(
            "SELECT reason, status, attempts, last_error FROM alerter_notifications WHERE channel ="
            " 'gone' ORDER BY seq"
        )
        assert [(r["reason"], r["status"], r["attempts"]) for r in rows] == [
            ("first", "failed", 1),
            ("resolved", "failed", 1),
        ]
        assert "HTTP 404" in rows[0]["last_error"]
        attempts = await run.pool.fetchval("SELECT count(*) FROM alerter_delivery_attempts")
        assert attempts == 4
        assert run.consumer is not None
        info = await js.consumer_info("LLMSCOPE_VIOLATIONS", "alerter")
        assert info.num_ack_pending == 0
        assert info.num_pending == 0
    finally:
        await run.close()
        await pd.stop()
        await broken.stop()


async def _answer(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


async def test_silence_mutes_notifications_but_not_the_record(
    database_url: str, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    run = await start_alerter(database_url, js, smtp_env(smtp.port), timings=TIMINGS)
    try:
        now = run.store.clock()
        await run.store.add_silence(
            Silence(
                "deploy-42",
                reason="rolling deploy",
                author="ana",
                models=("llama*",),
                starts_at=now - timedelta(minutes=1),
                ends_at=now + timedelta(hours=1),
            )
        )
        # A row this alerter cannot read (a zone it does not know: written by a newer replica or
        # by hand) mutes nothing and stops nothing.
        await run.pool.execute(
            "INSERT INTO alerter_silences (id, kind, reason, author, weekly_days, weekly_start,"
            " weekly_end, timezone) VALUES ('odd', 'silence', 'why', 'bo', $1, $2, $3, 'Mars/Olympus')",
            [0, 1, 2, 3, 4, 5, 6],
            time(0, 0),
            time(23, 59),
        )
        await publish(js, violation(1), violation(2, model="qwen2:7b"))
        await eventually(lambda: len(box.messages) >= 1, what="the qwen message")
        # Every group flushed since, and the qwen message is the only one any flush planned.
        seen = run.store.clock()
        await eventually(
            lambda: all_flushed_after(run.pool, seen, TIMINGS.group_interval), what="later flushes"
        )
        assert sum((await planned(run.pool)).values()) == 1
        assert len(box.messages) == 1
        assert "qwen2:7b" in box.messages[0]["Subject"]
        muted = await run.pool.fetchrow("SELECT muted_by FROM alerter_alerts WHERE model = 'llama3.1:8b'")
        assert muted is not None
        assert muted["muted_by"] == "deploy-42"
        assert await run.store.expire_silence("deploy-42")
        await eventually(lambda: len(box.messages) >= 2, what="the message once the silence ended")
        assert "llama3.1:8b" in box.messages[1]["Subject"]
    finally:
        await run.close()
        smtp.stop()


async def test_email_context_table_from_the_api_telemetry_and_settings(
    database_url: str, js: JetStreamContext
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    api = await _api_tables(database_url)
    ev = violation(0)
    rows = [
        (
            f"p{i}" if i != 0 else "p0",
            ev.ts + timedelta(seconds=2 * i),
            "ollama",
            "llama3.1:8b",
            "simple-1",
            "ok",
            800.0 + i,
            100.0,
            40.0,
        )
        for i in range(-15, 6)
    ]
    await api.executemany(
        "INSERT INTO telemetry (id, ts, provider, model, prompt_id, status, latency_ms, ttft_ms,"
        " tokens_per_s) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
        rows,
    )
    # The API's settings, as it mirrors them into their bucket; its telemetry, as it answers.
    side = await api_side(js, database_url)
    await side.put_settings(
        {
            "smtp_host": '"127.0.0.1"',
            "smtp_port": json.dumps(smtp.port),
            "smtp_security": '"none"',
            "smtp_to": '"ops@example.com"',
            "alert_on_rule": '["R1"]',
            "alert.email.enabled": "true",
        }
    )
    # channels from the API's settings only
    run = await start_alerter(database_url, js, {}, timings=TIMINGS)
    try:
        await publish(js, violation(5, rule="R2"), ev)  # R2 is not in alert_on_rule
        await eventually(lambda: len(box.messages) >= 1, what="email configured through settings")
        # Every group flushed since, and only the R1 message was ever planned.
        seen = run.store.clock()
        await eventually(
            lambda: all_flushed_after(run.pool, seen, TIMINGS.group_interval), what="later flushes"
        )
        assert sum((await planned(run.pool)).values()) == 1
        assert len(box.messages) == 1
        assert box.envelopes[0] == ["ops@example.com"]
        body = box.messages[0].get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert "latency 2.4 s, +200 % over the 800 ms baseline" in box.messages[0]["Subject"]
        assert "one probe beyond the control limits [R1, critical]" in text
        table = [line for line in text.splitlines() if line.startswith("   ") and "+00:00" in line]
        assert len(table) == 16  # 10 before + the signalling point + 5 after (all there is)
        assert sum(line.startswith("   *") for line in table) == 1
    finally:
        await run.close()
        await api.close()
        await side.close()
        smtp.stop()


async def test_context_table_reads_the_violation_target_only(database_url: str, js: JetStreamContext) -> None:
    api = await _api_tables(database_url)
    ev = structs.replace(violation(0), target="gpu-a")
    rows = [
        (
            f"{target}-{i}",
            ev.ts + timedelta(seconds=i),
            "ollama",
            "llama3.1:8b",
            "simple-1",
            "ok",
            value,
            target,
        )
        for i in range(-5, 3)
        for target, value in (("gpu-a", 800.0), ("gpu-b", 5000.0))
    ]
    await api.executemany(
        "INSERT INTO telemetry (id, ts, provider, model, prompt_id, status, latency_ms, target)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        rows,
    )
    side = await api_side(js, database_url)
    run = await start_alerter(database_url, js, {})
    try:
        context = await run.alerter.api.context_for([ev])
        points = context[ev.episode_id]
        assert len(points) == 8  # gpu-a's 8 points; gpu-b's are another chart
        assert {p.value for p in points} == {800.0}
        untargeted = await run.alerter.api.context_for([violation(0)])  # an older event: every target
        assert {p.value for p in untargeted[violation(0).episode_id]} == {800.0, 5000.0}
    finally:
        await run.close()
        await api.close()
        await side.close()
