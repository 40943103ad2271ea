"""DNS rebinding: the address checked is the address connected to (issue 9, finding 5).

A resolver injected through the outbound policy answers like a rebinding attacker's DNS: a
public address for the first lookup (the check), this host for the next (the connection)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from llmscope.alerter.destinations import Destinations, guarded_session
from llmscope.alerter.notifiers.email import EmailConfig, EmailNotifier
from llmscope.alerter.notifiers.webhook import WebhookNotifier
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret
from tests.alerter.factories import HttpSink, Mailbox, smtp_server
from tests.alerter.test_notifiers import notification

PUBLIC = "93.184.215.14"


class ScriptedResolver(AbstractResolver):
    """Answers the n-th lookup of any name with ``answers[n]`` (the last one from then on)."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.answers[min(len(self.lookups), len(self.answers) - 1)]
        self.lookups.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def sink() -> AsyncIterator[HttpSink]:
    server = HttpSink()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def hook_url(sink: HttpSink) -> str:
    port = sink.url.rsplit(":", 1)[1]
    return f"http://hooks.rebind.test:{port}/hook"


async def test_a_name_that_rebinds_to_this_host_after_the_check_reaches_nothing(sink: HttpSink) -> None:
    resolver = ScriptedResolver(PUBLIC, "127.0.0.1")
    policy = Destinations(resolver=resolver)
    async with guarded_session(policy) as session:
        notifier = WebhookNotifier("hook", Secret(hook_url(sink)), session, destinations=policy)
        with pytest.raises(DeliveryError) as refused:
            await notifier.send(notifier.build_payload(notification()))
    assert "destination not allowed: hooks.rebind.test is a loopback address" in str(refused.value)
    assert not refused.value.retryable
    assert resolver.lookups == ["hooks.rebind.test", "hooks.rebind.test"]  # the check passed
    assert sink.requests == []


async def test_without_the_guarded_connector_the_same_name_gets_through(sink: HttpSink) -> None:
    """The check before the send alone is fooled: what the guarded connector closes."""
    resolver = ScriptedResolver(PUBLIC, "127.0.0.1")
    policy = Destinations(resolver=resolver)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver)) as session:
        notifier = WebhookNotifier("hook", Secret(hook_url(sink)), session, destinations=policy)
        await notifier.send(notifier.build_payload(notification()))
    assert len(sink.requests) == 1


async def test_a_name_allowed_by_network_connects_to_the_address_it_was_checked_at(sink: HttpSink) -> None:
    resolver = ScriptedResolver("127.0.0.1")
    policy = Destinations(["127.0.0.0/8"], resolver=resolver)
    async with guarded_session(policy) as session:
        notifier = WebhookNotifier("hook", Secret(hook_url(sink)), session, destinations=policy)
        await notifier.send(notifier.build_payload(notification()))
    headers, _, path = sink.requests[0]
    assert path == "/hook"
    assert headers["Host"].startswith("hooks.rebind.test")  # the name, not the address


async def test_smtp_connects_to_the_checked_address_with_one_lookup() -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    try:
        config = EmailConfig(
            host="mail.rebind.test",
            sender="a@example.com",
            recipients=("b@example.com",),
            port=smtp.port,
            security="none",
        )
        # A name that resolves to this host is refused before anything is sent.
        refused = EmailNotifier(
            "mail", config, destinations=Destinations(resolver=ScriptedResolver("127.0.0.1"))
        )
        with pytest.raises(DeliveryError, match="is a loopback address"):
            await refused.send(refused.build_payload(notification()))
        assert box.messages == []

        # Allowed by network, not by name: the name never resolves through the system (it
        # cannot), so reaching the local server proves the connection used the checked address.
        pinned = ScriptedResolver("127.0.0.1")
        allowed = EmailNotifier("mail", config, destinations=Destinations(["127.0.0.1/32"], resolver=pinned))
        await allowed.send(allowed.build_payload(notification()))
        assert len(box.messages) == 1
        assert pinned.lookups == ["mail.rebind.test"]
    finally:
        smtp.stop()
