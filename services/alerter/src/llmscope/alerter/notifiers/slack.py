"""Slack incoming webhooks: the facts of each alert in an attachment coloured by severity."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from llmscope.alerter import messages as m
from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.http import post
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

MAX_ALERTS = 10  # Slack caps blocks per message; the rest are counted


_BUTTONS = (("Incident link", "Open incident"), ("Violation", "View details"), ("Chart", "Chart"))


def _mrkdwn(text: str) -> str:
    # Slack's three control characters; everything else is shown as written.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _alert_blocks(n: Notification, a: AlertView, resolved: bool) -> list[dict[str, Any]]:
    facts = n.facts(a)
    links = {k: v for k, v in facts if v.startswith(("http://", "https://"))}
    lines = [f"*{_mrkdwn(k)}:* {_mrkdwn(v)}" for k, v in facts if k not in links]
    state = "Resolved" if resolved else "Firing"
    buttons = [
        {"type": "button", "text": {"type": "plain_text", "text": text}, "url": links[key]}
        for key, text in _BUTTONS
        if key in links
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{state}*\n" + "\n".join(lines)}},
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    return blocks


class SlackNotifier:
    """Posts to an incoming-webhook URL (a secret: it is the credential)."""

    kind = "slack"

    def __init__(
        self,
        name: str,
        url: Secret,
        session: aiohttp.ClientSession,
        *,
        send_resolved: bool = True,
        destinations: Destinations | None = None,
    ) -> None:
        self.name = name
        self._destinations = destinations
        self._url = url
        self._session = session
        self.send_resolved = send_resolved

    def build_payload(self, notification: Notification) -> dict[str, Any]:
        n = notification
        attachments: list[dict[str, Any]] = []
        shown = [(a, False) for a in n.firing] + [(a, True) for a in n.resolved]
        for alert, resolved in shown[:MAX_ALERTS]:
            # Coloured by severity (critical red), green once resolved, blue for an improvement.
            tone = "resolved" if resolved else m.tone([alert.event])
            attachments.append({"color": m.colour(tone), "blocks": _alert_blocks(n, alert, resolved)})
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": n.title[:150]}}
        ]
        if n.cascade and n.incident is not None:
            inc = n.incident
            url = n.incident_url()
            text = f"*Cascade*: {len(inc.models)} models degraded together: {_mrkdwn(', '.join(inc.models))}"
            if url:
                text += f"\n<{url}|Open the incident>"
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        if len(shown) > MAX_ALERTS:
            more = len(shown) - MAX_ALERTS
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {more} more"}]})
        return {"text": n.title, "blocks": blocks, "attachments": attachments}

    async def send(self, payload: dict[str, Any]) -> str:
        if not self._url:
            raise DeliveryError("no Slack webhook URL configured", retryable=False)
        status, body = await post(
            self._session,
            self._url.get(),
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            destinations=self._destinations,
        )
        return f"HTTP {status} {body.strip()[:100]}"
