"""The service as a process: SIGKILL mid-delivery and restart; the CLI; send_test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from llmscope.alerter.__main__ import main
from llmscope.alerter.testsend import send_test
from llmscope.api.alerting import AlerterClient
from llmscope.config.env import Env
from llmscope.proto import subjects
from llmscope.proto.control import NotificationQuery, NotificationReply
from llmscope.stack.ports import free_port
from tests.alerter.factories import LOOPBACK_ALLOWED, HttpSink, Mailbox, hang, smtp_server, violation
from tests.alerter.harness import eventually, publish
from tests.scrape import Sample, scrape, total, values


async def _all_finished(db: asyncpg.Connection) -> bool:
    return not await db.fetchval("SELECT count(*) FROM alerter_notifications WHERE status = 'sending'")


def _spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llmscope.alerter"], env={**os.environ, **env}, stdout=out, stderr=out
        )


@pytest.mark.fault
@pytest.mark.parametrize(
    ("restarted_as", "lease_s"),
    [
        # Another name: the claim is taken over once its lease runs out.
        ("second", "5"),
        # The same name: taken back at start, long before the lease (60 s) could run out.
        ("first", "60"),
    ],
)
async def test_sigkill_mid_delivery_then_restart_sends_each_notification_once(
    database_url: str,
    nats_url: str,
    nc: NATS,
    js: JetStreamContext,
    tmp_path: Path,
    restarted_as: str,
    lease_s: str,
) -> None:
    answered: Counter[str] = Counter()

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return await hang(request, n)  # the process dies while this delivery is in flight
        answered[request.headers["X-LLMscope-Delivery"]] += 1
        return web.Response(text="ok")

    sink = HttpSink(behaviour)
    url = await sink.start()
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "LLMSCOPE_WEBHOOK_URL": url + "/hook",
        **LOOPBACK_ALLOWED,
        "LLMSCOPE_ALERTER_GROUP_WAIT_S": "0.2",
        "LLMSCOPE_ALERTER_GROUP_INTERVAL_S": "0.2",
        "LLMSCOPE_ALERTER_TICK_S": "0.1",
        # The lease must outlast an attempt plus the longest backoff (checked at start).
        "LLMSCOPE_ALERTER_LEASE_S": lease_s,
        "LLMSCOPE_ALERTER_SEND_TIMEOUT_S": "3",
        "LLMSCOPE_ALERTER_RETRY_MAX_S": "0.5",
        "LLMSCOPE_ALERTER_HEALTH_PORT": "0",
        "LLMSCOPE_ANALYSIS_DELAY_S": "0",
    }
    db = await asyncpg.connect(database_url)
    log = tmp_path / "alerter.log"
    proc = _spawn({**env, "LLMSCOPE_ALERTER_INSTANCE": "first"}, log)
    try:
        # one host per model: three old single points of one host, still open, are a cascade
        await publish(js, *(violation(i, model=f"m{i}", host=f"gpu-m{i}") for i in range(3)))

        async def two_sent_one_held_by_the_sink() -> bool:
            if await db.fetchval("SELECT to_regclass('alerter_notifications')") is None:
                return False
            rows = await db.fetch("SELECT status FROM alerter_notifications")
            in_flight = await db.fetchval(
                "SELECT count(*) FROM alerter_delivery_attempts WHERE state = 'in_flight'"
            )
            return (
                sorted(r["status"] for r in rows) == ["sending", "sent", "sent"]
                and in_flight == 1
                and len(sink.requests) == 3  # the sink holds the third request open
            )

        await eventually(two_sent_one_held_by_the_sink, within=30, what="two sent, one held by the sink")
        stuck = await db.fetchval("SELECT id FROM alerter_notifications WHERE status = 'sending'")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _spawn({**env, "LLMSCOPE_ALERTER_INSTANCE": restarted_as}, log)
        await eventually(lambda: len(answered) == 3, within=30, what="the stuck notification after restart")
        await eventually(
            lambda: _all_finished(db), within=10, what="the re-sent notification recorded as sent"
        )
        assert set(answered.values()) == {1}  # every notification answered exactly once
        assert len(sink.requests) == 4  # 3 + the one re-sent after the kill (it never got its answer)
        rows = await db.fetch("SELECT status, claimed_by FROM alerter_notifications ORDER BY id")
        assert [r["status"] for r in rows] == ["sent"] * 3
        assert Counter(r["claimed_by"] for r in rows) == Counter(["first", "first", restarted_as])
        # The interrupted attempt is in the log, by the dead process, and exactly one success.
        attempts = await db.fetch(
            "SELECT attempt, ok, state, instance, detail FROM alerter_delivery_attempts"
            " WHERE notification_id = $1 ORDER BY attempt",
            stuck,
        )
        assert [(a["attempt"], a["ok"], a["state"], a["instance"]) for a in attempts] == [
            (1, False, "interrupted", "first"),
            (2, True, "done", restarted_as),
        ]
        assert attempts[0]["detail"].startswith("the sender (first) stopped during this attempt")
        assert await db.fetchval("SELECT count(*) FROM alerter_delivery_attempts WHERE ok") == 3
        # ... and so it reads through the control subject the API's /api/alerts/notifications uses.
        reply = await AlerterClient(lambda: nc).request(
            subjects.alerter_notifications(), NotificationQuery(limit=10), NotificationReply
        )
        (record,) = (n for n in reply.notifications if n.id == stuck)
        assert [(a.state, a.ok) for a in record.attempt_log] == [("interrupted", False), ("done", True)]
        assert record.status == "sent"
        info = await js.consumer_info("LLMSCOPE_VIOLATIONS", "alerter")
        assert info.num_pending == 0
        assert info.num_ack_pending == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        await db.close()
        await sink.stop()
    assert proc.returncode == 0, log.read_text()[-3000:]


async def test_metrics_count_deliveries_incidents_lag_and_dead_letters(
    database_url: str, nats_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=503 if n == 1 else 200, text="ok")  # the first attempt fails

    sink = HttpSink(behaviour)
    url = await sink.start()
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "LLMSCOPE_WEBHOOK_URL": url + "/hook",
        **LOOPBACK_ALLOWED,
        "LLMSCOPE_ALERTER_GROUP_WAIT_S": "0.2",
        "LLMSCOPE_ALERTER_TICK_S": "0.1",
        "LLMSCOPE_ALERTER_RETRY_INITIAL_S": "0.1",
        "LLMSCOPE_ALERTER_HEALTH_HOST": "127.0.0.1",
        "LLMSCOPE_ALERTER_HEALTH_PORT": str(port),
    }
    log = tmp_path / "alerter.log"
    proc = _spawn(env, log)
    try:
        await publish(js, violation(1))
        await js.publish(subjects.violations("ollama", "m", "R1"), b"not a violation")
        samples: list[Sample] = []
        async with aiohttp.ClientSession() as session:

            async def all_reported() -> bool:
                nonlocal samples
                try:
                    samples = await scrape(session, f"http://127.0.0.1:{port}/metrics")
                except aiohttp.ClientConnectionError:
                    return False  # not listening yet
                webhook = {"channel": "webhook"}
                return (
                    total(samples, "llmscope_alerter_notifications_total", status="sent", **webhook) == 1
                    # Sampled from Postgres and from the server every 10 s.
                    and values(samples, "llmscope_alerter_incidents", state="open", severity="critical")
                    == [1]
                    and values(samples, "llmscope_consumer_pending_messages", consumer="alerter") == [0]
                    and values(samples, "llmscope_dead_letters_total", consumer="alerter") == [1]
                )

            await eventually(all_reported, within=40, what="delivery, incident, lag and dead letter reported")
        assert total(samples, "llmscope_alerter_delivery_attempts_total", channel="webhook", ok="false") == 1
        assert total(samples, "llmscope_alerter_delivery_attempts_total", channel="webhook", ok="true") == 1
        assert total(samples, "llmscope_alerter_delivery_attempt_seconds_count", channel="webhook") == 2
        assert total(samples, "llmscope_alerter_violations_total", state="open") == 1
        assert values(samples, "llmscope_build_info", service="alerter") == [1.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        await sink.stop()
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_cli_check_config_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["--check-config"]) == 2
    assert "DATABASE_URL" in capsys.readouterr().err
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@127.0.0.1:1/db")
    monkeypatch.setenv("LLMSCOPE_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/secret-token")
    assert main(["--check-config"]) == 0
    out = capsys.readouterr().out
    assert "channel slack: kind=slack enabled=True" in out
    assert "route default: channels=slack severities=critical" in out
    assert "secret-token" not in out
    monkeypatch.setenv("LLMSCOPE_ALERTER_LEASE_S", "30")
    assert main(["--check-config"]) == 2
    err = capsys.readouterr().err
    assert "LLMSCOPE_ALERTER_LEASE_S=30: must be at least 106.25 s" in err
    assert "LLMSCOPE_ALERTER_RETRY_MAX_S" in err
    monkeypatch.delenv("LLMSCOPE_ALERTER_LEASE_S")
    bad = tmp_path / "a.yaml"
    bad.write_text("routes: [{name: r, channels: [nope]}]")
    assert main(["--check-config", "--config", str(bad)]) == 2
    assert "unknown channels" in capsys.readouterr().err


async def test_send_test_reports_the_channel_answer() -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    failing = HttpSink(lambda r, n: _status(500))
    url = await failing.start()
    try:
        settings: dict[str, object] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "smtp_to": "me@example.com",
            "email_enabled": True,
        }
        result = await send_test("email", settings, env=Env(LOOPBACK_ALLOWED))
        assert result.ok, result
        assert result.status == "sent"
        assert "accepted" in result.detail
        assert box.messages[0]["Subject"] == "[LLMscope] Test notification (sample data, nothing is wrong)"
        hook = await send_test("webhook", {}, env=Env({**LOOPBACK_ALLOWED, "LLMSCOPE_WEBHOOK_URL": url}))
        assert not hook.ok
        assert (hook.status, hook.detail, hook.attempts) == ("failed", "HTTP 500", 1)
        missing = await send_test("slack", {}, env=Env({}))
        assert missing.status == "not_configured"
        secret = await send_test(
            "slack",
            {"slack_webhook_url": "http://127.0.0.1:9/services/T/B/tok3n"},
            env=Env(LOOPBACK_ALLOWED),
            attempt_timeout=1.0,
        )
        assert not secret.ok
        assert "tok3n" not in secret.detail
    finally:
        smtp.stop()
        await failing.stop()


async def _status(status: int) -> web.Response:
    return web.Response(status=status, text="boom")


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local (cloud metadata)"),
        ("http://10.0.0.5:11434", "private"),
        ("http://127.0.0.1:11434/v1", "loopback"),
    ],
)
def test_llm_analysis_url_goes_through_the_outbound_policy(
    url: str, kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9: the LLM analysis URL was allowed as configured, whatever it pointed at."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:pw@127.0.0.1:1/db")
    monkeypatch.delenv("LLMSCOPE_ALERT_ALLOWED_HOSTS", raising=False)
    monkeypatch.setenv("LLMSCOPE_ANALYSIS_LLM_URL", url)
    monkeypatch.setenv("LLMSCOPE_ANALYSIS_LLM_MODEL", "judge")
    assert main(["--check-config"]) == 2
    err = capsys.readouterr().err
    assert f"LLMSCOPE_ANALYSIS_LLM_URL: destination not allowed: {urlsplit(url).hostname} is a {kind}" in err
    # The service itself refuses before waiting for its database (port 1 never answers).
    assert main([]) == 2
    assert "LLMSCOPE_ANALYSIS_LLM_URL: destination not allowed" in capsys.readouterr().err
    # The operator's allow-list, the same as the channels', admits it.
    monkeypatch.setenv("LLMSCOPE_ALERT_ALLOWED_HOSTS", f"{urlsplit(url).hostname}")
    assert main(["--check-config"]) == 0


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        (
            {"LLMSCOPE_WEBHOOK_URL": "hooks.example.com/secret-token"},
            "LLMSCOPE_WEBHOOK_URL: expected a URL starting with http:// or https://",
        ),
        (
            {"LLMSCOPE_SLACK_WEBHOOK_URL": "ftp://hooks.slack.com/services/T/B/secret-token"},
            "LLMSCOPE_SLACK_WEBHOOK_URL: expected a URL starting with http:// or https://",
        ),
        (
            {"LLMSCOPE_TEAMS_WEBHOOK_URL": "secret-token"},
            "LLMSCOPE_TEAMS_WEBHOOK_URL: expected a URL starting with http:// or https://",
        ),
        (
            {"LLMSCOPE_SMTP_HOST": "smtp.example.com", "LLMSCOPE_SMTP_PORT": "abc"},
            "LLMSCOPE_SMTP_PORT='abc': expected an integer",
        ),
    ],
)
def test_a_bad_channel_variable_stops_the_service_at_start(
    variables: dict[str, str], said: str, tmp_path: Path
) -> None:
    """Found by hand: a webhook URL that is no URL was taken (the channel failed at its first
    alert), and a bad ``LLMSCOPE_SMTP_PORT`` was reported only once Postgres and NATS answered,
    never while they were down. Port 1 never answers: the service must refuse before waiting."""
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://u:pw@127.0.0.1:1/db",
        "NATS_URL": "nats://127.0.0.1:1",
        "LLMSCOPE_ALERTER_HEALTH_PORT": "0",
        **variables,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "llmscope.alerter"], env=env, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"still waiting for Postgres with a bad {', '.join(variables)}") from exc
    assert done.returncode == 2, done.stderr[-2000:]
    assert said in done.stderr
    assert "Traceback" not in done.stderr
    assert "secret-token" not in done.stderr
