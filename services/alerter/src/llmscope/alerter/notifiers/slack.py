"""Slack incoming webhooks: Block Kit blocks in an attachment coloured by the rule."""

from __future__ import annotations

import json
import zlib
from typing import Any

import aiohttp

from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification, describe
from llmscope.alerter.notifiers.http import post
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

RULE_COLOURS = {
    "R1": "#FF0000",
    "R2": "#FFA500",
    "R3": "#0099FF",
    "R4": "#9B59B6",
    "R5": "#E91E63",
    "R6": "#795548",
    "R7": "#009688",
    "R8": "#607D8B",
    "EWMA": "#8E44AD",
    "CUSUM": "#D35400",
    "AVAILABILITY": "#000000",
}
RESOLVED_COLOUR = "#2EB67D"
_FALLBACK = ("#C0392B", "#16A085", "#2C3E50", "#F39C12", "#7F8C8D")
MAX_ALERTS = 10  # Slack caps blocks per message; the rest are counted


def rule_colour(rule: str) -> str:
    """The seeds' colours for R1-R3, fixed ones for the other rules, a stable pick otherwise."""
    key = rule.upper()
    return RULE_COLOURS.get(key) or _FALLBACK[zlib.crc32(key.encode()) % len(_FALLBACK)]


def _alert_blocks(n: Notification, a: AlertView, resolved: bool) -> list[dict[str, Any]]:
    ev, lim = a.event, a.event.limits
    state = "Resolved" if resolved else "Firing"
    fields = [
        f"*Center*\n{lim.center:.4g}",
        f"*UCL / LCL*\n{lim.ucl:.4g} / {lim.lcl:.4g}",
        f"*Sigma*\n{lim.sigma:.4g}",
        f"*Baseline*\n{ev.baseline.id} (n={ev.baseline.n})",
    ]
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{state}* {describe(ev)}"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "View details"},
                    "url": n.details_url(a.episode_id),
                }
            ],
        },
    ]


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
            colour = RESOLVED_COLOUR if resolved else rule_colour(alert.event.rule)
            attachments.append({"color": colour, "blocks": _alert_blocks(n, alert, resolved)})
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": n.title[:150]}}
        ]
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
