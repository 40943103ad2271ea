"""PagerDuty Events API v2: trigger while the group fires, resolve when it clears.

The ``dedup_key`` is the episode id of the group's first violation, so one group is one
PagerDuty incident (reminders re-trigger the same key, which PagerDuty de-duplicates).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from llmscope.alerter import messages as m
from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import Notification
from llmscope.alerter.notifiers.http import post_json
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret

DEFAULT_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def _details(facts: list[tuple[str, str]]) -> dict[str, str]:
    """Facts as PagerDuty's custom details; repeated labels (outage lines) joined, not lost."""
    out: dict[str, str] = {}
    for key, value in facts:
        out[key] = f"{out[key]}\n{value}" if key in out else value
    return out


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
        # One incident is one PagerDuty incident: its updates and resolution share the key.
        dedup_key = (n.incident.id if n.incident else "") or n.lead_episode_id or n.alerts[0].episode_id
        resolve = {"event_action": "resolve", "dedup_key": dedup_key}
        if not n.firing:
            return [resolve]
        first = n.firing[0]
        ev = first.event
        links = [{"href": n.details_url(ev.episode_id), "text": "Violation"}]
        if (url := n.incident_url()) is not None:
            links.insert(0, {"href": url, "text": "Incident"})
        if n.reason != "test":
            links.append({"href": m.chart_url(n.public_url, ev), "text": "Chart"})
        return [
            {
                "event_action": "trigger",
                "dedup_key": dedup_key,
                "payload": {
                    "summary": n.title.removeprefix("[LLMscope] ")[:1024],
                    "source": ev.host or f"{ev.provider}/{ev.model}",
                    "severity": _SEVERITY.get(m.worst([a.event for a in n.firing]), "warning"),
                    "timestamp": (ev.opened_at or ev.ts).isoformat(),
                    "component": ev.model,
                    "group": ev.provider,
                    "class": ",".join(sorted({a.event.rule for a in n.firing})),
                    "custom_details": {
                        "firing": [_details(n.facts(a)) for a in n.firing[:20]],
                        "resolved": [m.one_line(a.event) for a in n.resolved[:20]],
                        "models": list(n.incident.models) if n.incident else [ev.model],
                        "reason": n.reason,
                        "notification_id": n.id,
                    },
                },
                "links": links,
                "client": "LLMscope",
                "client_url": n.public_url,
            }
        ] + ([resolve] if n.reason == "test" else [])  # a test must not leave anyone paged

    async def send(self, payload: list[dict[str, Any]]) -> str:
        if not self._routing_key:
            raise DeliveryError("no PagerDuty routing key configured", retryable=False)
        answers = []
        for event in payload:
            status, text = await post_json(
                self._session,
                self.events_url,
                {**event, "routing_key": self._routing_key.get()},
                destinations=self._destinations,
            )
            answers.append(f"HTTP {status} {text.strip()[:100]}")
        return "; ".join(answers)
