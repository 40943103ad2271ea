"""``send_test``: one test message through one configured channel, for ``POST /api/alerts/test``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import aiohttp

from llmscope.alerter.config import Timings, build_runtime, load_file
from llmscope.alerter.destinations import Destinations, guarded_session
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.registry import build_notifier
from llmscope.alerter.retry import Attempt, DeliveryError, as_delivery_error
from llmscope.config.env import ConfigError, Env
from llmscope.proto.base import new_id
from llmscope.proto.control import TEST_SEND_MAX_S
from llmscope.proto.telemetry import SystemMetrics
from llmscope.proto.violation import BaselineRef, ChartLimits, ViolationEvent

TestStatus = Literal["sent", "failed", "expired", "not_configured", "invalid_config"]
"""``expired`` is no longer answered (a test is one attempt) but stays in the wire contract."""

TEST_ATTEMPT_TIMEOUT_S = TEST_SEND_MAX_S
"""The longest a test message waits for the channel: what the API counts on, plus a margin
(``llmscope.proto.control``)."""


@dataclass(frozen=True, slots=True)
class TestResult:
    """The channel's answer to a test message; never contains a secret."""

    __test__ = False  # not a pytest class

    ok: bool
    channel: str
    kind: str | None
    status: TestStatus
    detail: str
    attempts: int = 0


def sample_violation(now: datetime) -> ViolationEvent:
    vid = f"test-{new_id()}"
    return ViolationEvent(
        id=vid,
        ts=now,
        episode_id=vid,
        provider="ollama",
        model="llmscope-test",
        host="test-host",
        metric="latency_ms",
        rule="R1",
        rule_name="Beyond limits (test message)",
        severity="critical",
        value=2400.0,
        deviation_sigma=4.2,
        limits=ChartLimits(
            center=800.0,
            sigma=380.0,
            ucl=1940.0,
            lcl=0.0,
            zone_a_upper=1560.0,
            zone_a_lower=40.0,
            zone_b_upper=1180.0,
            zone_b_lower=420.0,
        ),
        baseline=BaselineRef(id="test-baseline", n=30),
        point_ids=("test-point",),
        point_values=(2400.0,),
        point_ts=(now,),
        system=SystemMetrics(cpu_percent=42.0, memory_percent=61.0),
        opened_at=now,
    )


async def send_test(
    channel_name: str,
    settings: Mapping[str, object],
    *,
    env: Env | None = None,
    config_path: Path | None = None,
    public_url: str = "http://127.0.0.1:8000",
    session: aiohttp.ClientSession | None = None,
    attempt_timeout: float = TEST_ATTEMPT_TIMEOUT_S,
) -> TestResult:
    """Send a test message through ``channel_name`` (a channel name, or a kind: email, slack, ...).

    ``settings`` is the API's settings as key -> value (its ``settings`` table, as the API mirrors it
    into the settings bucket: api_view); the alerter's
    config file (``config_path`` or ``LLMSCOPE_ALERTER_CONFIG``) and environment are read too.
    A disabled channel sends nothing, not even a test: enable it first. One attempt, no retries
    (at most ``attempt_timeout`` seconds): the person who pressed the button waits for it, and a
    retryable failure (HTTP 500, a refused connection) is the answer they need, not a reason to
    keep them waiting; status ``sent`` or ``failed``, never ``expired``. The answer names the
    outcome with a fixed reason (the HTTP or SMTP status, "timed out", "could not connect:
    connection refused", a refused destination...), never the text the remote end sent back:
    with it, a test send read internal services' answers.
    """
    env = env or Env()
    try:
        path = config_path or (Path(p) if (p := env.optional_text("LLMSCOPE_ALERTER_CONFIG")) else None)
        file = load_file(path) if path else None
        runtime = build_runtime(file, env, settings, timings=Timings())
    except ConfigError as exc:
        return TestResult(False, channel_name, None, "invalid_config", str(exc))
    spec = runtime.channels.get(channel_name) or next(
        (c for c in runtime.channels.values() if c.kind == channel_name), None
    )
    if spec is None:
        known = ", ".join(sorted(runtime.channels)) or "none"
        return TestResult(
            False, channel_name, None, "not_configured", f"no channel {channel_name!r} (configured: {known})"
        )
    if not spec.enabled:
        return TestResult(
            False, spec.name, spec.kind, "failed", f"channel {spec.name!r} is disabled: enable it to send"
        )
    now = datetime.now(UTC)
    notification = Notification(
        id=f"test-{new_id()}",
        created_at=now,
        reason="test",
        route="test",
        group_key="test",
        channel=spec.name,
        firing=(AlertView(sample_violation(now)),),
        public_url=public_url,
    )
    own_session = session is None
    # Without a session of the caller's, one that connects only where the channel may go.
    http = session or guarded_session(spec.destinations or Destinations.from_env(env))
    try:
        notifier = build_notifier(spec, http)
        try:
            payload = notifier.build_payload(notification)
        except DeliveryError as exc:  # our own checks of the configuration: no remote answer in it
            return TestResult(False, spec.name, spec.kind, "failed", str(exc))

        try:
            async with asyncio.timeout(attempt_timeout):
                answer = await notifier.send(payload)
        except Exception as exc:  # the channel's failure is the test's answer
            err = as_delivery_error(exc)
            attempt = Attempt(1, datetime.now(UTC), False, str(err), err.retryable, err.status)
        else:
            attempt = Attempt(1, datetime.now(UTC), True, answer)
    finally:
        if own_session:
            await http.close()
    return TestResult(
        attempt.ok, spec.name, spec.kind, "sent" if attempt.ok else "failed", fixed_reason(attempt), 1
    )


_STATUS = re.compile(r"^(HTTP \d{3}|SMTP \d{3}|SMTP accepted|SMTP authentication failed: \d{3})")
# Reasons written by LLMscope itself, from the configuration alone: safe to show whole.
_OWN = (
    "destination not allowed",
    "no ",
    "bad email address",
    "invalid URL",
    "template error",
    "timed out",
    # SMTP configuration errors (notifiers/email.py): our words, the local TLS library's at most.
    "the server does not offer STARTTLS",
    "TLS handshake failed",
    "the server's TLS certificate was refused",
    "unknown SMTP host",
)

_TRANSPORT = (
    ("ClientConnectorDNSError", "the host name did not resolve"),
    ("ClientConnectorCertificateError", "the server's TLS certificate was refused"),
    ("ClientConnectorSSLError", "TLS handshake failed"),
    ("Connect call failed", "connection refused"),
    ("Connection refused", "connection refused"),
    ("ServerDisconnectedError", "the server closed the connection"),
)


def fixed_reason(attempt: Attempt) -> str:
    """What the last attempt came to, without anything the remote end wrote (pure)."""
    if attempt.status_code is not None:
        return f"HTTP {attempt.status_code}"
    detail = attempt.detail
    if detail.startswith(_OWN):
        return detail
    if (match := _STATUS.match(detail)) is not None:
        return match.group(1)
    if "transport error" in detail:
        # Which kind of transport error, from the exception's class and the local OS's words
        # (aiohttp's "[Connect call failed ...]"), never from anything the remote end sent.
        for marker, why in _TRANSPORT:
            if marker in detail:
                return f"could not connect: {why}"
        return "could not connect"
    return "delivered" if attempt.ok else "failed"
