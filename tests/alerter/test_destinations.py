"""Notifications never go to this host, cloud metadata or the private network unless allowed,
and a test send reports a fixed reason, never the remote answer (issue 9, finding 5)."""

from __future__ import annotations

import pytest
from aiohttp import web

from llmscope.alerter.destinations import ALLOWED_HOSTS_ENV, Destinations
from llmscope.alerter.retry import DeliveryError
from llmscope.alerter.testsend import send_test
from llmscope.config.env import Env
from tests.alerter.factories import LOOPBACK_ALLOWED, HttpSink, Mailbox, smtp_server


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("localhost", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fe80::1", "link-local (cloud metadata)"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", "non-public"),  # shared (carrier-grade NAT) space
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
    ],
)
async def test_internal_destinations_are_refused_by_default(host: str, kind: str) -> None:
    with pytest.raises(DeliveryError) as refused:
        await Destinations().check(host, 80)
    assert kind in str(refused.value)
    assert ALLOWED_HOSTS_ENV in str(refused.value)
    assert not refused.value.retryable


async def test_the_allow_list_names_hosts_addresses_and_networks() -> None:
    allowed = Destinations(["127.0.0.1", "10.0.0.0/8", "Hooks.Internal", "[::1]"])
    for host in ("127.0.0.1", "10.200.0.1", "hooks.internal", "::1"):
        await allowed.check(host, 443)
    with pytest.raises(DeliveryError):
        await allowed.check("192.168.1.1", 443)
    await Destinations().check("93.184.215.14", 443)  # a public address needs no allowing
    await Destinations().check_url("https://93.184.215.14/services/T/B/X")
    with pytest.raises(DeliveryError) as refused:
        await Destinations().check_url("http://169.254.169.254/latest/meta-data/?token=s3cret")
    assert "s3cret" not in str(refused.value)


async def test_a_test_send_to_an_internal_address_sends_nothing() -> None:
    sink = HttpSink()
    url = await sink.start()
    try:
        refused = await send_test("webhook", {}, env=Env({"LLMSCOPE_WEBHOOK_URL": url}), attempt_timeout=2.0)
        assert (refused.ok, refused.status, refused.attempts) == (False, "failed", 1)
        assert refused.detail.startswith("destination not allowed: 127.0.0.1 is a loopback address")
        assert sink.requests == []
        metadata = await send_test(
            "slack",
            {"slack_webhook_url": "http://169.254.169.254/latest/meta-data/", "slack_enabled": True},
            env=Env({}),
            attempt_timeout=2.0,
        )
        assert "link-local" in metadata.detail
        allowed = await send_test(
            "webhook", {}, env=Env({**LOOPBACK_ALLOWED, "LLMSCOPE_WEBHOOK_URL": url}), attempt_timeout=2.0
        )
        assert allowed.ok
        assert len(sink.requests) == 1
    finally:
        await sink.stop()


async def test_a_test_send_to_a_loopback_smtp_host_is_refused_unless_allowed() -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    settings: dict[str, object] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_security": "none",
        "smtp_to": "me@example.com",
        "email_enabled": True,
    }
    try:
        refused = await send_test("email", settings, env=Env({}), attempt_timeout=2.0)
        assert "destination not allowed" in refused.detail
        assert box.messages == []
        assert (await send_test("email", settings, env=Env(LOOPBACK_ALLOWED), attempt_timeout=2.0)).ok
    finally:
        smtp.stop()


async def test_a_test_send_reports_the_status_never_the_answer_body() -> None:
    async def internal(_request: web.Request, n: int) -> web.Response:
        if n == 1:
            return web.Response(status=404, text="redis_version:7.2.4 INTERNAL-ANSWER")
        return web.Response(text="ok, and some internal detail")

    sink = HttpSink(internal)
    url = await sink.start()
    try:
        env = Env({**LOOPBACK_ALLOWED, "LLMSCOPE_WEBHOOK_URL": url})
        result = await send_test("webhook", {}, env=env, attempt_timeout=2.0)
        assert result.detail == "HTTP 404"
        ok = await send_test(
            "slack", {"slack_webhook_url": url, "slack_enabled": True}, env=env, attempt_timeout=2.0
        )
        assert ok.ok
        assert ok.detail == "HTTP 200"  # the sink answered "ok": not repeated either
        closed = await send_test(
            "slack",
            {"slack_webhook_url": "http://127.0.0.1:9/x", "slack_enabled": True},
            env=env,
            attempt_timeout=2.0,
        )
        assert closed.detail in ("could not connect: connection refused", "timed out")
    finally:
        await sink.stop()


async def test_a_disabled_channel_sends_no_test() -> None:
    sink = HttpSink()
    url = await sink.start()
    try:
        settings = {"slack_webhook_url": url, "slack_enabled": False}
        result = await send_test("slack", settings, env=Env(LOOPBACK_ALLOWED), attempt_timeout=2.0)
        assert (result.ok, result.status, result.attempts) == (False, "failed", 0)
        assert "disabled" in result.detail
        assert sink.requests == []
    finally:
        await sink.stop()
