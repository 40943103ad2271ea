"""Microsoft Teams: an Adaptive Card posted to a Workflows ("Post to a channel when a webhook
request is received") URL, the successor of the retired Office 365 connectors' MessageCard.

The body is a ``message`` with one ``application/vnd.microsoft.card.adaptive`` attachment: a
title coloured by state, one container per alert (its facts as a FactSet) and the links as
``Action.OpenUrl`` buttons. Workflows answers 202 Accepted.
"""

from __future__ import annotations

from typing import Any

from llmscope.alerter import messages as m
from llmscope.alerter.notifiers.base import Notification
from llmscope.alerter.notifiers.chat import JsonWebhookNotifier, cascade_line, shown, split_facts

CARD_VERSION = "1.4"  # what Teams renders on desktop, web and mobile
# Adaptive Card colours are names, not hex: the theme decides the shade.
TONE_COLOURS = {
    "critical": "Attention",
    "warning": "Warning",
    "info": "Accent",
    "resolved": "Good",
    "improved": "Accent",
}
TONE_STYLES = {
    "critical": "attention",
    "warning": "warning",
    "info": "accent",
    "resolved": "good",
    "improved": "accent",
}


def card(n: Notification) -> dict[str, Any]:
    """The Adaptive Card (pure)."""
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": n.title,
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            "color": "Good" if not n.firing else TONE_COLOURS[n.tone],
        }
    ]
    if (line := cascade_line(n)) is not None:
        body.append({"type": "TextBlock", "text": line, "wrap": True, "weight": "Bolder"})
    alerts, more = shown(n)
    actions: list[dict[str, Any]] = []
    seen: set[str] = set()
    for a, resolved in alerts:
        tone = "resolved" if resolved else m.tone([a.event])
        facts, links = split_facts(n, a)
        body.append(
            {
                "type": "Container",
                "style": TONE_STYLES[tone],
                "items": [
                    {"type": "TextBlock", "text": "Resolved" if resolved else "Firing", "weight": "Bolder"},
                    {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts]},
                ],
            }
        )
        for title, url in links:
            if url not in seen:  # one button per distinct link (a cascade shares its incident)
                seen.add(url)
                actions.append({"type": "Action.OpenUrl", "title": title, "url": url})
    if more:
        body.append({"type": "TextBlock", "text": f"and {more} more", "isSubtle": True})
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": body,
        "actions": actions[:6],  # Teams shows at most six actions
    }


class TeamsNotifier(JsonWebhookNotifier):
    """Posts an Adaptive Card to a Teams Workflows webhook URL (a secret)."""

    kind = "teams"
    what = "Teams webhook"

    def build_payload(self, notification: Notification) -> dict[str, Any]:
        return {
            "type": "message",
            "summary": notification.title[:250],
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": card(notification),
                }
            ],
        }
