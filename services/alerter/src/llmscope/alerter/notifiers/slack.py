"""Slack: the facts of each alert in an attachment coloured by severity.

Two ways in. An incoming webhook (the URL is the credential) answers ``ok`` and nothing else, so
its messages cannot be threaded: each update is a new message in the channel. A bot token
(``xoxb-``, scope ``chat:write``) posts through ``chat.postMessage``, which answers the message's
``ts``: the first message of an incident is stored with it (``threads``), and the incident's
updates, reminders and resolution go to that thread (``thread_ts``; the resolution is also
broadcast to the channel).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from llmscope.alerter import messages as m
from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.chat import UrlNotifier, shown, split_facts
from llmscope.alerter.notifiers.http import post_json
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

DEFAULT_SLACK_API = "https://slack.com/api"
# chat.postMessage answers HTTP 200 with {"ok": false, "error": ...}: these are worth a retry,
# every other error (invalid_auth, channel_not_found, not_in_channel, ...) is configuration.
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)


class ThreadStore(Protocol):
    """Where a channel keeps the first message of each thread (Postgres: ``alerter_threads``)."""

    async def thread_get(self, channel: str, key: str) -> str | None: ...

    async def thread_put(self, channel: str, key: str, ref: str) -> str:
        """Store ``ref`` unless the key has one; the stored one (first writer wins)."""
        ...


@dataclass(frozen=True, slots=True)
class SlackPayload:
    """The message body and, for a bot token, the thread it belongs to (the incident)."""

    body: dict[str, Any]
    thread_key: str = ""
    broadcast: bool = False


def thread_key(n: Notification) -> str:
    """One thread per incident; a notification outside any incident threads per group."""
    if n.incident is not None:
        return f"incident:{n.incident.id}"
    return f"group:{n.id.split(':', 1)[0]}" if n.reason != "test" else ""


def _mrkdwn(text: str) -> str:
    # Slack's three control characters; everything else is shown as written.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _alert_blocks(n: Notification, a: AlertView, resolved: bool) -> list[dict[str, Any]]:
    facts, links = split_facts(n, a)
    lines = [f"*{_mrkdwn(k)}:* {_mrkdwn(v)}" for k, v in facts]
    state = "Resolved" if resolved else "Firing"
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": title}, "url": url} for title, url in links
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{state}*\n" + "\n".join(lines)}},
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return blocks


class SlackNotifier(UrlNotifier):
    """Posts to an incoming-webhook URL (a secret: it is the credential), or with a bot token."""

    kind = "slack"
    what = "Slack webhook"

    def __init__(
        self,
        name: str,
        url: Secret,
        session: aiohttp.ClientSession,
        *,
        send_resolved: bool = True,
        destinations: Destinations | None = None,
        token: Secret | None = None,
        channel: str = "",
        api_url: str = DEFAULT_SLACK_API,
        threads: ThreadStore | None = None,
    ) -> None:
        super().__init__(name, url, session, send_resolved=send_resolved, destinations=destinations)
        self._token = token or Secret("")
        self.channel = channel
        self.api_url = api_url.rstrip("/")
        self._threads = threads

    @property
    def threaded(self) -> bool:
        """Only a bot token learns a message's ``ts``: webhooks cannot thread."""
        return bool(self._token)

    def build_payload(self, notification: Notification) -> SlackPayload:
        body = self.message(notification)
        if not self.threaded:
            return SlackPayload(body)
        if not self.channel:
            raise DeliveryError("a Slack bot token needs the channel id to post to", retryable=False)
        n = notification
        body = {"channel": self.channel, **body}
        return SlackPayload(
            body, thread_key=thread_key(n), broadcast=not n.firing and n.reason not in ("test", "merged")
        )

    def message(self, notification: Notification) -> dict[str, Any]:
        """The message itself, the same for a webhook and for chat.postMessage."""
        n = notification
        attachments: list[dict[str, Any]] = []
        alerts, more = shown(n)
        for alert, resolved in alerts:
            # Coloured by severity (critical red), green once resolved, blue for an improvement.
            tone = "resolved" if resolved else m.tone([alert.event])
            attachments.append({"color": m.colour(tone), "blocks": _alert_blocks(n, alert, resolved)})
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": n.title[:150]}}
        ]
        if n.merged_into is not None and (url := n.merged_url()):
            inc = n.merged_into
            was = f"Incident {n.incident.id}" if n.incident else "This incident"
            text = (
                f"{_mrkdwn(was)} was merged into incident {_mrkdwn(inc.id)}: {_mrkdwn(inc.title)}."
                f" Its updates and resolution follow there.\n<{url}|Open incident {_mrkdwn(inc.id)}>"
            )
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        elif n.cascade and n.incident is not None:
            inc = n.incident
            url = n.incident_url()
            text = f"*Cascade*: {len(inc.models)} models degraded together: {_mrkdwn(', '.join(inc.models))}"
            if url:
                text += f"\n<{url}|Open the incident>"
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        if more:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {more} more"}]})
        return {"text": n.title, "blocks": blocks, "attachments": attachments}

    async def send(self, payload: SlackPayload) -> str:
        if self.threaded:
            return await self._post_message(payload)
        status, body = await self._post_to_url(payload.body)
        return f"HTTP {status} {body.strip()[:100]}"

    async def _post_message(self, payload: SlackPayload) -> str:
        body = dict(payload.body)
        key = payload.thread_key
        root = await self._threads.thread_get(self.name, key) if key and self._threads else None
        if root is not None:
            body["thread_ts"] = root
            if payload.broadcast:
                body["reply_broadcast"] = True
        status, text = await post_json(
            self._session,
            f"{self.api_url}/chat.postMessage",
            body,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Authorization": f"Bearer {self._token.get()}",
            },
            destinations=self._destinations,
        )
        try:
            answer = json.loads(text)
        except ValueError:
            raise DeliveryError(f"chat.postMessage: not JSON (HTTP {status})", retryable=True) from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = str(answer.get("error", "unknown")) if isinstance(answer, dict) else "unknown"
            raise DeliveryError(f"chat.postMessage: {error}", retryable=error in TRANSIENT_ERRORS)
        ts = str(answer.get("ts") or "")
        if root is None and key and ts and self._threads is not None:
            # The incident's first message: its later messages thread under it. It was delivered
            # whatever happens here, so a store error must not make it be sent again.
            try:
                root = await self._threads.thread_put(self.name, key, ts)
            except Exception as exc:
                return f"HTTP {status} ok ts={ts} (thread not stored: {type(exc).__name__})"
        where = f" in thread {root}" if root and root != ts else ""
        return f"HTTP {status} ok ts={ts}{where}"
