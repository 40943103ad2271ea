"""Violation events and small local servers for the alerter's tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from llmscope.alerter.destinations import ALLOWED_HOSTS_ENV
from llmscope.proto import codec
from llmscope.proto.alert import NotificationEvent
from llmscope.proto.telemetry import SystemMetrics
from llmscope.proto.violation import BaselineRef, ChartLimits, Severity, ViolationEvent

LOOPBACK_ALLOWED = {ALLOWED_HOSTS_ENV: "127.0.0.1,::1,localhost"}
"""The tests' channels are local servers (HttpSink, aiosmtpd): the alerter refuses loopback
destinations unless the operator allows them, so every test environment allows it explicitly."""

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday


def violation(
    n: int = 0,
    *,
    model: str = "llama3.1:8b",
    provider: str = "ollama",
    host: str = "gpu-1",
    rule: str = "R1",
    severity: Severity = "critical",
    metric: str = "latency_ms",
    value: float = 2400.0,
    at: datetime | None = None,
    prefix: str = "v",
) -> ViolationEvent:
    ts = at or T0 + timedelta(seconds=n)
    vid = f"{prefix}{n}-{model}-{rule}".replace(":", "_")
    return ViolationEvent(
        id=vid,
        ts=ts,
        episode_id=vid,
        provider=provider,  # type: ignore[arg-type]
        model=model,
        host=host,
        prompt_id="simple-1",
        metric=metric,
        rule=rule,
        rule_name="Beyond limits",
        severity=severity,
        value=value,
        deviation_sigma=(value - 800.0) / 300.0,
        limits=ChartLimits(
            center=800.0,
            sigma=300.0,
            ucl=1700.0,
            lcl=0.0,
            zone_a_upper=1400.0,
            zone_a_lower=200.0,
            zone_b_upper=1100.0,
            zone_b_lower=500.0,
        ),
        baseline=BaselineRef(id="b1", n=30),
        point_ids=(f"p{n}",),
        point_values=(value,),
        point_ts=(ts,),
        system=SystemMetrics(cpu_percent=95.0, memory_percent=60.0, gpu_percent=99.0),
        opened_at=ts,
    )


def cleared(ev: ViolationEvent, at: datetime | None = None) -> ViolationEvent:
    from msgspec import structs

    return structs.replace(ev, id=f"{ev.id}-clear", state="cleared", ts=at or ev.ts + timedelta(minutes=5))


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping every message it accepts."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[list[str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    quits: int = 0  # sessions the client ended with QUIT

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(envelope.content)
        msg = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.envelopes.append(list(envelope.rcpt_tos))
        return "250 Message accepted"


def smtp_server(mailbox: Mailbox, **kwargs: Any) -> Controller:
    from llmscope.stack.ports import free_port

    # aiosmtpd logs each session at INFO, and "Connection lost during _handle_client()" for its
    # own readiness probe (a connection closed without a word) and after every QUIT it answers:
    # the test server's chatter, not ours, in any test run after the root logger went to INFO
    # (the service's main sets it up in-process in tests/alerter/test_main.py).
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


class HttpSink:
    """A local HTTP server recording requests; ``behaviour(request, n)`` answers the n-th (1-based)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes, str]] = []
        self.behaviour = behaviour
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((dict(request.headers), body, request.path))
        if self.behaviour is not None:
            return await self.behaviour(request, len(self.requests))
        return web.Response(text="ok")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def webhook_sink() -> tuple[HttpSink, list[NotificationEvent]]:
    """A started webhook receiver and the notifications it got, decoded, in arrival order."""
    got: list[NotificationEvent] = []

    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        got.append(codec.decode_as(await request.read(), NotificationEvent))
        return web.Response(text="ok")

    sink = HttpSink(behaviour)
    await sink.start()
    return sink, got


async def hang(_: web.Request, __: int) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")
