"""Channels: pure payloads, the registry against the protocol, and real local servers."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtpd
import pytest
from aiohttp import web

from llmscope.alerter.config import ChannelSpec
from llmscope.alerter.notifiers import base
from llmscope.alerter.notifiers.base import AlertView, ContextPoint, Notification, Notifier
from llmscope.alerter.notifiers.email import EmailConfig, EmailNotifier, message_id
from llmscope.alerter.notifiers.pagerduty import PagerDutyNotifier
from llmscope.alerter.notifiers.registry import NOTIFIER_CLASSES, build_notifier
from llmscope.alerter.notifiers.slack import SlackNotifier
from llmscope.alerter.notifiers.webhook import DELIVERY_HEADER, WebhookNotifier, verify
from llmscope.alerter.retry import DeliveryError, RetryPolicy, send_with_retry
from llmscope.config.env import Secret
from llmscope.proto import codec
from llmscope.proto.alert import NotificationEvent, NotifyReason
from tests.alerter.factories import T0, HttpSink, Mailbox, cleared, hang, smtp_server, violation

CERTS = Path(aiosmtpd.__file__).parent / "tests" / "certs"


def notification(n_firing: int = 2, *, resolved: int = 0, reason: NotifyReason = "first") -> Notification:
    firing = tuple(AlertView(violation(i, rule=f"R{i % 3 + 1}")) for i in range(n_firing))
    done = tuple(AlertView(violation(100 + i), cleared(violation(100 + i))) for i in range(resolved))
    return Notification(
        id="7:mail:1",
        created_at=T0,
        reason=reason,
        route="default",
        group_key="provider=ollama,model=llama3.1:8b",
        channel="mail",
        firing=firing,
        resolved=done,
        group_labels={"provider": "ollama", "model": "llama3.1:8b"},
        public_url="https://scope.example/",
        lead_episode_id=firing[0].episode_id if firing else done[0].episode_id,
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_every_channel_satisfies_the_protocol(session: aiohttp.ClientSession) -> None:
    specs = {
        "email": ChannelSpec(
            "e", "email", email=EmailConfig(host="h", sender="a@b.io", recipients=("c@d.io",))
        ),
        "slack": ChannelSpec("s", "slack", url=Secret("http://x")),
        "webhook": ChannelSpec("w", "webhook", url=Secret("http://x")),
        "pagerduty": ChannelSpec("p", "pagerduty", secret=Secret("k")),
        "alertmanager": ChannelSpec("a", "alertmanager", url=Secret("http://x"), resend_s=60),
        "teams": ChannelSpec("t", "teams", url=Secret("http://x")),
        "discord": ChannelSpec("d", "discord", url=Secret("http://x")),
        "mattermost": ChannelSpec("m", "mattermost", url=Secret("http://x")),
    }
    assert set(specs) == set(NOTIFIER_CLASSES)
    for kind, spec in specs.items():
        notifier = build_notifier(spec, session)
        assert isinstance(notifier, Notifier)
        assert notifier.kind == kind
        assert isinstance(notifier, NOTIFIER_CLASSES[kind])
        assert asyncio.iscoroutinefunction(notifier.send)
        notifier.build_payload(notification())  # pure: no I/O needed


def test_email_payload_has_text_html_stats_and_context() -> None:
    n = notification(1, resolved=1)
    ctx = tuple(
        ContextPoint(T0 + timedelta(seconds=i), 800.0 + i, f"p{i}", in_pattern=i == 10) for i in range(21)
    )
    n = replace(n, firing=(AlertView(n.firing[0].event, context=ctx),))
    msg = EmailNotifier(
        "mail", EmailConfig(host="h", sender="scope@example.com", recipients=("a@x.io", "b@x.io"))
    ).build_payload(n)
    assert msg["To"] == "a@x.io, b@x.io"
    # The Message-ID is the notification id: a re-send (another replica, after a crash) repeats it.
    assert msg["Message-ID"] == "<7.mail.1@llmscope>"
    again = EmailNotifier("mail", EmailConfig(host="h2", sender="s@example.com", recipients=("c@x.io",)))
    assert again.build_payload(n)["Message-ID"] == msg["Message-ID"]
    assert message_id("12:ops mail:3") == "<12.ops.mail.3@llmscope>"
    assert message_id("..::") == "<notification@llmscope>"
    assert "CRITICAL" in msg["Subject"]
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert html is not None
    body = text.get_content()
    for needle in (
        "What:",
        "latency 2.4 s, +200 % over the 800 ms baseline (slower)",
        "prompt simple-1",
        "How sure:",
        "one probe beyond the control limits",
        "Control limits:",
        "0 ms .. 1.7 s",
        "800 ms (30 probes, initial baseline)",
        "CPU 95%",
        "RESOLVED",
        "https://scope.example/violations/",
        "https://scope.example/?provider=ollama",
    ):
        assert needle in body, needle
    for never in ("Sigma", "sigma", "Zone A", "k="):
        assert never not in body, never
    assert body.count("\n   ") >= 21  # the 21-row context table
    # The context table says where each point stands, never the probe status "ok".
    assert "within limits" in body
    assert "2.4 s  above UCL" in body
    assert "  ok" not in body
    assert "<table" in html.get_content()
    assert "background:#fdd" in html.get_content()
    assert "#D0021B" in html.get_content()  # critical in red


def test_context_note_is_against_the_limits() -> None:
    ev = violation(1)
    assert ContextPoint(T0, 2400.0, "p").note(ev) == "above UCL"
    assert ContextPoint(T0, 900.0, "p").note(ev) == "within limits"
    assert ContextPoint(T0, None, "p", status="timeout").note(ev) == "failed: timeout"


def test_email_bad_address_is_permanent() -> None:
    notifier = EmailNotifier(
        "mail", EmailConfig(host="h", sender="scope@example.com", recipients=("not an address",))
    )
    with pytest.raises(DeliveryError) as err:
        notifier.build_payload(notification())
    assert not err.value.retryable


def test_slack_colours_by_severity_and_links() -> None:
    payload = SlackNotifier("chat", Secret("http://x"), None).build_payload(notification(3, resolved=1)).body  # type: ignore[arg-type]
    colours = [a["color"] for a in payload["attachments"]]
    assert colours == ["#D0021B", "#D0021B", "#D0021B", "#2EB67D"]  # critical red, resolved green
    warn = replace(notification(1), firing=(AlertView(violation(1, severity="warning")),))
    warned = SlackNotifier("c", Secret("http://x"), None).build_payload(warn).body  # type: ignore[arg-type]
    assert warned["attachments"][0]["color"] == "#F5A623"
    buttons = payload["attachments"][0]["blocks"][-1]["elements"]
    assert [b["text"]["text"] for b in buttons] == ["View details", "Chart"]
    assert buttons[0]["url"] == f"https://scope.example/violations/{violation(0, rule='R1').episode_id}"
    big = SlackNotifier("chat", Secret("http://x"), None).build_payload(notification(50)).body  # type: ignore[arg-type]
    assert len(big["attachments"]) == 10
    assert "and 40 more" in json.dumps(big["blocks"])


def test_pagerduty_trigger_and_resolve_use_the_episode_id() -> None:
    pd = PagerDutyNotifier("pd", Secret("k"), None)  # type: ignore[arg-type]
    n = notification(2)
    (trigger,) = pd.build_payload(n)
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == n.lead_episode_id
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["links"][0]["text"] == "Violation"
    done = replace(n, firing=(), resolved=n.firing)
    assert pd.build_payload(done) == [{"event_action": "resolve", "dedup_key": n.lead_episode_id}]


async def test_webhook_body_is_the_event_schema_and_signed(session: aiohttp.ClientSession) -> None:
    sink = HttpSink()
    url = await sink.start()
    try:
        hook = WebhookNotifier("hook", Secret(url + "/in"), session, secret=Secret("shh"))
        answer = await hook.send(hook.build_payload(notification(2)))
        assert answer.startswith("HTTP 200")
        headers, body, _ = sink.requests[0]
        event = codec.decode_as(body, NotificationEvent)
        assert event.id == "7:mail:1"
        assert len(event.firing) == 2
        assert headers[DELIVERY_HEADER] == "7:mail:1"
        assert verify("shh", headers, body)
        assert not verify("wrong", headers, body)
        assert not verify("shh", headers, body + b" ")
        assert not verify("shh", headers, body, now=float(headers["X-LLMscope-Timestamp"]) + 3600)  # replay
    finally:
        await sink.stop()


async def _status(status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=f"answer {status}", headers=headers or {})


@pytest.mark.parametrize(
    ("script", "expected", "attempts"),
    [
        ([200], "sent", 1),
        ([500, 500, 200], "sent", 3),
        ([429, 200], "sent", 2),
        ([404], "failed", 1),
        (["hang", 200], "sent", 2),
        ([503] * 20, "expired", None),
    ],
)
async def test_http_channel_against_a_real_server(
    session: aiohttp.ClientSession, script: list[Any], expected: str, attempts: int | None
) -> None:
    async def behaviour(_: web.Request, n: int) -> web.StreamResponse:
        step = script[min(n, len(script)) - 1]
        if step == "hang":
            return await hang(_, n)
        return await _status(step, {"Retry-After": "1"} if step == 429 else None)

    sink = HttpSink(behaviour)
    url = await sink.start()
    loop = asyncio.get_running_loop()
    try:
        slack = SlackNotifier("chat", Secret(url + "/hook"), session)
        payload = slack.build_payload(notification())
        started = loop.time()
        out = await send_with_retry(
            lambda: slack.send(payload),
            # Retry-After is honoured up to max_delay.
            policy=RetryPolicy(initial=0.05, max_delay=1.0, deadline=1.5, attempt_timeout=0.5),
        )
        assert out.status == expected
        if attempts is not None:
            assert len(out.attempts) == attempts == len(sink.requests)
        if 429 in script:
            assert loop.time() - started >= 1.0  # Retry-After: 1 honoured over a 0.05 s backoff
        if "hang" in script:
            assert out.attempts[0].detail == "timed out"
    finally:
        await sink.stop()


async def test_email_through_real_smtp_plain_starttls_and_ssl() -> None:
    box = Mailbox(refuse={"ghost@example.com"})
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(CERTS / "server.crt", CERTS / "server.key")
    plain = smtp_server(box)
    starttls = smtp_server(box, tls_context=ctx, require_starttls=True)
    implicit = smtp_server(box, ssl_context=ctx)
    try:
        for server, security in ((plain, "none"), (starttls, "starttls"), (implicit, "ssl")):
            cfg = EmailConfig(
                host="127.0.0.1",
                port=server.port,
                security=security,  # type: ignore[arg-type]
                sender="scope@example.com",
                recipients=("a@example.com", "b@example.com"),
                validate_certs=False,
            )
            mail = EmailNotifier("mail", cfg)
            answer = await mail.send(mail.build_payload(notification()))
            assert "accepted" in answer
        assert len(box.messages) == 3
        assert all(env == ["a@example.com", "b@example.com"] for env in box.envelopes)
        assert box.messages[1].is_multipart()
        # plain SMTP to a server that demands STARTTLS: a permanent refusal, not a retry loop
        cfg = EmailConfig(
            host="127.0.0.1",
            port=starttls.port,
            security="none",
            sender="scope@example.com",
            recipients=("a@example.com",),
        )
        mail = EmailNotifier("mail", cfg)
        with pytest.raises(DeliveryError) as err:
            await mail.send(mail.build_payload(notification()))
        assert not err.value.retryable
        cfg = EmailConfig(
            host="127.0.0.1",
            port=plain.port,
            security="none",
            sender="scope@example.com",
            recipients=("ghost@example.com",),
        )
        mail = EmailNotifier("mail", cfg)
        with pytest.raises(DeliveryError, match="refused") as err:
            await mail.send(mail.build_payload(notification()))
        assert not err.value.retryable
    finally:
        for server in (plain, starttls, implicit):
            server.stop()
    dead = EmailConfig(
        host="127.0.0.1",
        port=plain.port,
        security="none",
        sender="scope@example.com",
        recipients=("a@example.com",),
        timeout=1,
    )
    mail = EmailNotifier("mail", dead)
    with pytest.raises(DeliveryError) as err:
        await mail.send(mail.build_payload(notification()))
    assert err.value.retryable  # connection refused: SMTP transport error


def test_describe_units() -> None:
    assert "latency 2.4 s, +200 % over the 800 ms baseline (slower)" in base.describe(violation(1))
