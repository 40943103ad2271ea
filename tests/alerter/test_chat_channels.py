"""Teams, Discord, Mattermost and Slack's chat.postMessage against local servers that check each
request's shape as the real service would, through a whole alerter: one cascade is one message
per channel naming both models, its resolution one more, and Slack threads them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from nats.js import JetStreamContext

from llmscope.alerter.notifiers.slack import SlackNotifier
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret
from tests.alerter.factories import HttpSink, cleared, violation
from tests.alerter.harness import eventually, publish, start_alerter
from tests.alerter.test_notifiers import notification

TOKEN = "xoxb-test-token"


def _absolute(url: object) -> bool:
    parts = urlsplit(url) if isinstance(url, str) else None
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def teams_errors(body: Any) -> list[str]:
    """What a Teams Workflows webhook needs to render an Adaptive Card."""
    errors = []
    if body.get("type") != "message":
        errors.append("type must be 'message'")
    atts = body.get("attachments")
    if not isinstance(atts, list) or len(atts) != 1:
        return [*errors, "one attachment expected"]
    att = atts[0]
    if att.get("contentType") != "application/vnd.microsoft.card.adaptive":
        errors.append("contentType is not an Adaptive Card")
    card = att.get("content") or {}
    if card.get("type") != "AdaptiveCard" or not isinstance(card.get("version"), str):
        errors.append("content is not an AdaptiveCard with a version")

    def walk(elements: Any, where: str) -> None:
        for i, el in enumerate(elements or ()):
            kind = el.get("type")
            if kind == "TextBlock" and not isinstance(el.get("text"), str):
                errors.append(f"{where}[{i}]: TextBlock without text")
            elif kind == "FactSet":
                for f in el.get("facts", ()):
                    if not (isinstance(f.get("title"), str) and isinstance(f.get("value"), str)):
                        errors.append(f"{where}[{i}]: fact without title/value")
            elif kind == "Container":
                walk(el.get("items"), f"{where}[{i}].items")
            elif kind not in ("TextBlock", "FactSet", "Container"):
                errors.append(f"{where}[{i}]: unexpected element {kind!r}")

    walk(card.get("body"), "body")
    for a in card.get("actions", ()):
        if a.get("type") != "Action.OpenUrl" or not _absolute(a.get("url")):
            errors.append(f"action {a} is not an OpenUrl with an absolute URL")
    if len(json.dumps(body)) > 28_000:
        errors.append("over Teams' 28 KB message size")
    return errors


def discord_errors(body: Any) -> list[str]:
    """Discord's documented webhook limits."""
    errors = []
    content, embeds = body.get("content", ""), body.get("embeds", [])
    if not content and not embeds:
        errors.append("content or embeds required")
    if len(content) > 2000:
        errors.append("content over 2000")
    if len(embeds) > 10:
        errors.append("over 10 embeds")
    if body.get("allowed_mentions") != {"parse": []}:
        errors.append("mentions not disabled")
    total = 0
    for e in embeds:
        title, desc, fields = e.get("title", ""), e.get("description", ""), e.get("fields", [])
        if len(title) > 256 or len(desc) > 4096 or len(fields) > 25:
            errors.append("embed title/description/fields over limit")
        if not isinstance(e.get("color"), int) or not 0 <= e["color"] <= 0xFFFFFF:
            errors.append("color is not an RGB integer")
        if "url" in e and not _absolute(e["url"]):
            errors.append("embed url not absolute")
        for f in fields:
            if not f.get("name") or not f.get("value") or len(f["name"]) > 256 or len(f["value"]) > 1024:
                errors.append(f"field {f.get('name')!r} empty or over limit")
        total += (
            len(title) + len(desc) + sum(len(f.get("name", "")) + len(f.get("value", "")) for f in fields)
        )
    if total > 6000:
        errors.append("embeds over 6000 characters")
    return errors


def mattermost_errors(body: Any) -> list[str]:
    """A Mattermost incoming webhook: text or attachments; Slack attachments, not Block Kit."""
    errors = []
    if not body.get("text") and not body.get("attachments"):
        errors.append("text or attachments required")
    if "blocks" in body or any("blocks" in a for a in body.get("attachments", ())):
        errors.append("Mattermost ignores Block Kit blocks")
    for a in body.get("attachments", ()):
        if not str(a.get("color", "")).startswith("#"):
            errors.append("attachment colour is not a hex colour")
        if not a.get("fallback"):
            errors.append("attachment without fallback")
        for f in a.get("fields", ()):
            if not isinstance(f.get("short"), bool) or not isinstance(f.get("value"), str):
                errors.append("field without short/value")
        if "title_link" in a and not _absolute(a["title_link"]):
            errors.append("title_link not absolute")
    if not isinstance(body.get("props", {}), dict):
        errors.append("props is not an object")
    return errors


def checking(check: Any, status: int, text: str = "") -> Any:
    async def answer(request: web.Request, _: int) -> web.StreamResponse:
        if request.content_type != "application/json":
            return web.Response(status=400, text="not JSON")
        errors = check(await request.json())
        return (
            web.Response(status=400, text="; ".join(errors))
            if errors
            else web.Response(status=status, text=text)
        )

    return answer


class SlackApi:
    """chat.postMessage as Slack answers it: HTTP 200 and ``ok``, ``ts`` or ``error``."""

    def __init__(self) -> None:
        self.issued: list[str] = []
        self.sink = HttpSink(self._answer)

    async def _answer(self, request: web.Request, n: int) -> web.StreamResponse:
        if request.path != "/api/chat.postMessage":
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        body = await request.json()
        if body.get("channel") != "C0ONCALL":
            return web.json_response({"ok": False, "error": "channel_not_found"})
        if not body.get("text"):
            return web.json_response({"ok": False, "error": "no_text"})
        if "thread_ts" in body and body["thread_ts"] not in self.issued:
            return web.json_response({"ok": False, "error": "thread_not_found"})
        ts = f"{1772452800 + n}.000{n:03d}"
        self.issued.append(ts)
        return web.json_response(
            {"ok": True, "channel": "C0ONCALL", "ts": ts, "message": {"text": body["text"]}}
        )

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.sink.requests]


Sinks = dict[str, HttpSink]


async def _count(pool: Any, query: str, n: int) -> bool:
    return len(await pool.fetch(query)) >= n


@pytest.fixture
async def chats() -> AsyncIterator[Sinks]:
    sinks = {
        "teams": HttpSink(checking(teams_errors, 202)),
        "discord": HttpSink(checking(discord_errors, 204)),
        "mattermost": HttpSink(checking(mattermost_errors, 200, "ok")),
    }
    for s in sinks.values():
        await s.start()
    try:
        yield sinks
    finally:
        for s in sinks.values():
            await s.stop()


async def test_a_cascade_is_one_message_per_chat_and_its_resolution_one_more(
    database_url: str, js: JetStreamContext, chats: Sinks
) -> None:
    env = {f"LLMSCOPE_{k.upper()}_WEBHOOK_URL": s.url + f"/{k}" for k, s in chats.items()}
    run = await start_alerter(database_url, js, env)
    try:
        a = violation(1, model="llama3.1:8b", rule="CUSUM")
        b = violation(2, model="qwen2:7b", rule="CUSUM")
        await publish(js, a, b)
        await eventually(lambda: all(s.requests for s in chats.values()), what="one message per chat")
        for kind, sink in chats.items():
            text = sink.requests[0][1].decode()
            assert "llama3.1:8b" in text, kind
            assert "qwen2:7b" in text, kind
            assert "Cascade on gpu-1" in text, kind
            assert "http://scope.test/incidents/inc-" in text, kind
        await publish(js, cleared(a), cleared(b))
        await eventually(lambda: all(len(s.requests) >= 2 for s in chats.values()), what="resolutions")
        for kind, sink in chats.items():
            assert "RESOLVED: cascade" in sink.requests[1][1].decode(), kind
        query = "SELECT channel, status, attempts FROM alerter_notifications WHERE status <> 'sending'"
        await eventually(lambda: _count(run.pool, query, 6), what="both messages recorded")
        # every message accepted at its first attempt: no request failed the servers' checks
        rows = await run.pool.fetch(query)
        assert sorted((r["channel"], r["status"], r["attempts"]) for r in rows) == sorted(
            (k, "sent", 1) for k in chats for _ in range(2)
        )
    finally:
        await run.close()


async def test_slack_bot_threads_an_incidents_updates_under_its_first_message(
    database_url: str, js: JetStreamContext
) -> None:
    slack = SlackApi()
    await slack.sink.start()
    env = {
        "LLMSCOPE_SLACK_BOT_TOKEN": TOKEN,
        "LLMSCOPE_SLACK_CHANNEL": "C0ONCALL",
        "LLMSCOPE_SLACK_API_URL": slack.sink.url + "/api",
    }
    run = await start_alerter(database_url, js, env)
    try:
        first = violation(1, rule="CUSUM")
        await publish(js, first)
        await eventually(lambda: len(slack.issued) >= 1, what="the first message")
        root = slack.issued[0]
        assert "thread_ts" not in slack.bodies()[0]
        incident = await run.pool.fetchval("SELECT id FROM alerter_incidents")
        assert await run.store.thread_get("slack", f"incident:{incident}") == root

        second = violation(2, rule="CUSUM", metric="ttft_ms")  # same model: same incident
        await publish(js, second)
        await eventually(lambda: len(slack.issued) >= 2, what="the update")
        update = slack.bodies()[1]
        assert update["thread_ts"] == root
        assert "reply_broadcast" not in update

        await publish(js, cleared(first), cleared(second))
        await eventually(lambda: any("RESOLVED" in b["text"] for b in slack.bodies()), what="the resolution")
        resolved = next(b for b in slack.bodies() if "RESOLVED" in b["text"])
        assert resolved["thread_ts"] == root
        assert resolved["reply_broadcast"] is True  # the channel sees it recovered
        done = "SELECT status, detail FROM alerter_notifications WHERE status <> 'sending' ORDER BY seq"
        await eventually(lambda: _count(run.pool, done, 3), what="three messages recorded")
        statuses = await run.pool.fetch(done)
        assert all(r["status"] == "sent" for r in statuses)
        assert f"in thread {root}" in statuses[-1]["detail"]
    finally:
        await run.close()
        await slack.sink.stop()


async def test_slack_api_errors_are_classified(database_url: str) -> None:
    slack = SlackApi()
    await slack.sink.start()
    run = await start_alerter(database_url, None, {})
    try:
        bad = SlackNotifier(
            "s",
            Secret(""),
            run.session,
            token=Secret("xoxb-wrong"),
            channel="C0ONCALL",
            api_url=slack.sink.url + "/api",
        )
        with pytest.raises(DeliveryError, match="invalid_auth") as err:
            await bad.send(bad.build_payload(notification()))
        assert not err.value.retryable  # a bad token is configuration, not a blip
        ok = SlackNotifier(
            "s",
            Secret(""),
            run.session,
            token=Secret(TOKEN),
            channel="C0ONCALL",
            api_url=slack.sink.url + "/api",
        )
        # no thread store (a test send): posts top-level and stores nothing
        answer = await ok.send(ok.build_payload(notification()))
        assert answer.startswith("HTTP 200 ok ts=")
        assert "thread_ts" not in slack.bodies()[-1]
    finally:
        await run.close()
        await slack.sink.stop()
