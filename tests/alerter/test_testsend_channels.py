"""The setup wizard's "Send test" for every channel kind, each against a local server that checks
its protocol: the test message arrives, is valid for that receiver, and the answer is the status."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from llmscope.alerter.testsend import send_test
from llmscope.config.env import Env
from tests.alerter.alertmanager_api import FakeAlertmanager
from tests.alerter.factories import LOOPBACK_ALLOWED, HttpSink, Mailbox, smtp_server
from tests.alerter.test_chat_channels import (
    TOKEN,
    SlackApi,
    checking,
    discord_errors,
    mattermost_errors,
    teams_errors,
)
from tests.alerter.test_merge_closing import PagerDuty


async def _webhook(request: web.Request, _: int) -> web.StreamResponse:
    """Our notification.v1 receiver: signed JSON with the test's reason."""
    body = await request.json()
    if body.get("reason") != "test" or "X-LLMscope-Signature" not in request.headers:
        return web.Response(status=400, text="not a signed test notification")
    return web.Response(text="ok")


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, Any]]:
    am, slack, pd = FakeAlertmanager(), SlackApi(), PagerDuty()
    pd.refused_resolves = 1  # its one refusal counted as spent: the test's resolve is taken at once
    sinks = {
        "teams": HttpSink(checking(teams_errors, 202)),
        "discord": HttpSink(checking(discord_errors, 204)),
        "mattermost": HttpSink(checking(mattermost_errors, 200, "ok")),
        "webhook": HttpSink(_webhook),
        "slack": slack.sink,
        "pagerduty": pd.sink,
        "alertmanager": am.sink,
    }
    for s in sinks.values():
        await s.start()
    try:
        yield {"sinks": sinks, "am": am}
    finally:
        for s in sinks.values():
            await s.stop()


ENV: dict[str, Callable[[str], dict[str, str]]] = {
    "teams": lambda url: {"LLMSCOPE_TEAMS_WEBHOOK_URL": url + "/teams"},
    "discord": lambda url: {"LLMSCOPE_DISCORD_WEBHOOK_URL": url + "/discord"},
    "mattermost": lambda url: {"LLMSCOPE_MATTERMOST_WEBHOOK_URL": url + "/hooks/x"},
    "webhook": lambda url: {"LLMSCOPE_WEBHOOK_URL": url + "/hook", "LLMSCOPE_WEBHOOK_SECRET": "s3cret"},
    "slack": lambda url: {
        "LLMSCOPE_SLACK_BOT_TOKEN": TOKEN,
        "LLMSCOPE_SLACK_CHANNEL": "C0ONCALL",
        "LLMSCOPE_SLACK_API_URL": url + "/api",
    },
    "pagerduty": lambda url: {
        "LLMSCOPE_PAGERDUTY_ROUTING_KEY": "R0UTING",
        "LLMSCOPE_PAGERDUTY_EVENTS_URL": url + "/v2/enqueue",
    },
    "alertmanager": lambda url: {"LLMSCOPE_ALERTMANAGER_URL": url},
}


@pytest.mark.parametrize("kind", sorted(ENV))
async def test_a_test_message_through_each_http_channel(kind: str, receivers: dict[str, Any]) -> None:
    sink: HttpSink = receivers["sinks"][kind]
    env = Env({**LOOPBACK_ALLOWED, **ENV[kind](sink.url)})
    result = await send_test(kind, {}, env=env, attempt_timeout=2.0, public_url="http://scope.test")
    assert (result.ok, result.kind, result.status, result.attempts) == (True, kind, "sent", 1), result
    assert result.detail.startswith("HTTP 2"), result.detail
    bodies = [json.loads(b) for _, b, _ in sink.requests]
    if kind == "pagerduty":  # triggered, then resolved at once: nobody stays paged by a test
        assert [b["event_action"] for b in bodies] == ["trigger", "resolve"]
        assert bodies[0]["dedup_key"] == bodies[1]["dedup_key"]
    else:
        assert len(bodies) == 1
    body = bodies[0]
    assert "Test" in json.dumps(body)  # the test message, said to be one
    if kind == "alertmanager":
        assert receivers["am"].rejected == []
        assert [a["labels"]["alertname"] for a in body] == ["LLMscopeTest"]


async def test_a_test_email_through_a_plain_smtp_server() -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    try:
        env = {
            **LOOPBACK_ALLOWED,
            "LLMSCOPE_SMTP_HOST": "127.0.0.1",
            "LLMSCOPE_SMTP_PORT": str(smtp.port),
            "LLMSCOPE_SMTP_SECURITY": "none",
            "LLMSCOPE_SMTP_FROM": "scope@example.com",
            "LLMSCOPE_ALERT_EMAIL_TO": "oncall@example.com",
        }
        result = await send_test("email", {}, env=Env(env), attempt_timeout=2.0)
        assert (result.ok, result.status, result.detail) == (True, "sent", "SMTP accepted")
        assert box.envelopes == [["oncall@example.com"]]
        assert "Test notification" in str(box.messages[0]["Subject"])
    finally:
        smtp.stop()


def _refused_url() -> str:
    """A loopback URL nothing listens on: the port was just bound and closed again."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


@pytest.mark.parametrize("kind", ["webhook", "slack"])
async def test_a_failing_test_send_answers_after_one_attempt_with_the_reason(kind: str) -> None:
    """A 500 and a refused connection are the answer to a test, not a reason to retry for 45 s."""
    failing = HttpSink(lambda r, n: _answer(500))
    url = await failing.start()
    try:
        for target, reason in ((url, "HTTP 500"), (_refused_url(), "could not connect: connection refused")):
            env = Env({**LOOPBACK_ALLOWED, "LLMSCOPE_WEBHOOK_URL": target})
            settings: dict[str, object] = {"slack_webhook_url": target, "slack_enabled": True}
            result = await send_test(kind, settings if kind == "slack" else {}, env=env)
            assert (result.ok, result.status, result.detail, result.attempts) == (False, "failed", reason, 1)
        assert len(failing.requests) == 1
    finally:
        await failing.stop()


async def _answer(status: int) -> web.Response:
    return web.Response(status=status, text="internal detail not to repeat")
