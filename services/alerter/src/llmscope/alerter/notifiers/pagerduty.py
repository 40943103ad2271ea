"""PagerDuty Events API v2: trigger while the group fires, resolve when it clears.

The ``dedup_key`` is the episode id of the group's first violation, so one group is one
PagerDuty incident (reminders re-trigger the same key, which PagerDuty de-duplicates).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import Notification, describe
from llmscope.alerter.notifiers.http import post
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

DEFAULT_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


class PagerDutyNotifier:
    kind = "pagerduty"

    def __init__(
        self,
        name: str,
        routing_key: Secret,
        session: aiohttp.ClientSession,
        *,
        events_url: str = DEFAULT_EVENTS_URL,
        send_resolved: bool = True,
        destinations: Destinations | None = None,
    ) -> None:
        self.name = name
        self._destinations = destinations
        self._routing_key = routing_key
        self._session = session
        self.events_url = events_url
        self.send_resolved = send_resolved

    def build_payload(self, notification: Notification) -> list[dict[str, Any]]:
        n = notification
        dedup_key = n.lead_episode_id or (n.firing or n.resolved)[0].episode_id
        resolve = {"event_action": "resolve", "dedup_key": dedup_key}
        if not n.firing:
            return [resolve]
        first = n.firing[0].event
        summary = f"{n.title.removeprefix('[LLMscope] ')}: {describe(first)}"[:1024]
        return [
            {
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "payload": {
                    "summary": summary,
                    "source": first.host or f"{first.provider}/{first.model}",
                    "severity": _SEVERITY.get(first.severity, "warning"),
                    "timestamp": (first.opened_at or first.ts).isoformat(),
                    "component": first.model,
                    "group": first.provider,
                    "class": ",".join(sorted({a.event.rule for a in n.firing})),
                    "custom_details": {
                        "violations": [describe(a.event) for a in n.firing[:50]],
                        "reason": n.reason,
                        "group": n.group_key,
                        "notification_id": n.id,
                    },
                },
                "links": [{"href": n.details_url(first.episode_id), "text": "View details"}],
                "client": "LLMscope",
                "client_url": n.public_url,
            }
        ] + ([resolve] if n.reason == "test" else [])  # a test must not leave anyone paged

    async def send(self, payload: list[dict[str, Any]]) -> str:
        if not self._routing_key:
            raise DeliveryError("no PagerDuty routing key configured", retryable=False)
        answers = []
        for event in payload:
            body = json.dumps({**event, "routing_key": self._routing_key.get()}).encode()
            status, text = await post(
                self._session,
                self.events_url,
                data=body,
                headers={"Content-Type": "application/json"},
                destinations=self._destinations,
            )
            answers.append(f"HTTP {status} {text.strip()[:100]}")
        return "; ".join(answers)
