"""What the incoming-webhook chats (Slack, Teams, Discord, Mattermost) share: the alerts a message
shows, their facts split into text and links, and (but for Slack, which also posts with a bot
token) one JSON POST to a URL that is itself the credential."""

from __future__ import annotations

from typing import Any

import aiohttp

from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.http import post_json
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

MAX_ALERTS = 10
"""Alerts shown per message (Discord allows 10 embeds, Slack caps blocks); the rest are counted."""
LINK_TITLES = (("Incident link", "Open incident"), ("Violation", "View details"), ("Chart", "Chart"))


def split_facts(n: Notification, a: AlertView) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(facts to read, (button title, url) links) of one alert."""
    facts = n.facts(a)
    urls = {k: v for k, v in facts if v.startswith(("http://", "https://"))}
    text = [(k, v) for k, v in facts if k not in urls]
    return text, [(title, urls[key]) for key, title in LINK_TITLES if key in urls]


def shown(n: Notification) -> tuple[list[tuple[AlertView, bool]], int]:
    """The alerts a message shows, (alert, resolved), and how many more it only counts."""
    alerts = [(a, False) for a in n.firing] + [(a, True) for a in n.resolved]
    return alerts[:MAX_ALERTS], max(0, len(alerts) - MAX_ALERTS)


def cascade_line(n: Notification) -> str | None:
    """The line before any alert: a merged incident's closing line, else a cascade's models."""
    if (merged := n.merge_line()) is not None:
        return merged
    if not (n.cascade and n.incident is not None):
        return None
    return f"Cascade: {len(n.incident.models)} models degraded together: {', '.join(n.incident.models)}"


class UrlNotifier:
    """A channel whose incoming-webhook URL is its credential (a secret): Slack and the chats."""

    what = "webhook"
    """the URL's name in the error when none is configured"""

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
        self._url = url
        self._session = session
        self._destinations = destinations
        self.send_resolved = send_resolved

    async def _post_to_url(self, payload: Any) -> tuple[int, str]:
        """POST the payload as JSON to the URL: (status, body), DeliveryError otherwise."""
        if not self._url:
            raise DeliveryError(f"no {self.what} URL configured", retryable=False)
        return await post_json(self._session, self._url.get(), payload, destinations=self._destinations)


class JsonWebhookNotifier(UrlNotifier):
    """POSTs a JSON body to the channel's incoming-webhook URL."""

    kind = "json-webhook"

    def build_payload(self, notification: Notification) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, payload: dict[str, Any]) -> str:
        status, body = await self._post_to_url(payload)
        return f"HTTP {status} {body.strip()[:100]}".strip()
