"""Prometheus Alertmanager: ``POST /api/v2/alerts``, so a team's routing, inhibition and
silences apply to LLMscope's alerts.

Each violation is one Alertmanager alert, identified by its labels (``alertname``, ``provider``,
``model``, ``target``, ``prompt``, ``metric``, ``rule``, ``severity``, ``host``, ``incident``;
empty ones left out, as Alertmanager treats an empty label as absent), with ``summary``,
``description`` and the links as annotations and the chart as ``generatorURL``. A firing alert
carries no ``endsAt``: Alertmanager then keeps it for its ``resolve_timeout`` (5m by default),
and the alerter re-sends firing alerts every ``resend_s`` (service.py) as Prometheus does. A
resolved alert carries ``endsAt``, the time its violation cleared. An incident merged into
another has its alerts told resolved (``endsAt`` the merge, unless they cleared before) under its
own labels, with the surviving incident as ``merged_into`` annotations; they fire on under the
survivor's.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import aiohttp

from llmscope.alerter import messages as m
from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.base import AlertView, Notification
from llmscope.alerter.notifiers.http import post_json
from llmscope.alerter.retry import DeliveryError
from llmscope.config.env import Secret
from llmscope.proto.redaction import redacted

API_PATH = "/api/v2/alerts"
TEST_LIFETIME = timedelta(minutes=5)
"""A test alert fires this long and then resolves by itself: nobody stays paged by a test."""


def alerts_url(base: str) -> str:
    """``http://am:9093`` or ``http://am:9093/api/v2/alerts``: the alerts endpoint."""
    base = base.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


def _time(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def alertname(n: Notification, a: AlertView) -> str:
    if n.reason == "test":
        return "LLMscopeTest"
    return "LLMscopeOutage" if m.is_outage(a.event) else "LLMscopeViolation"


def labels_of(n: Notification, a: AlertView) -> dict[str, str]:
    """What identifies the alert in Alertmanager: equal on firing, re-sends and resolution."""
    ev = a.event
    incident = a.incident or n.incident
    raw = {
        "alertname": alertname(n, a),
        "provider": ev.provider,
        "model": ev.model,
        "target": redacted(ev.target),
        "prompt": ev.prompt_id,
        "metric": ev.metric,
        "rule": ev.rule,
        "severity": ev.severity,
        "host": ev.host,
        "incident": incident.id if incident else "",
    }
    return {k: v for k, v in raw.items() if v}


def annotations_of(n: Notification, a: AlertView) -> dict[str, str]:
    facts = n.facts(a)
    links = {k: v for k, v in facts if v.startswith(("http://", "https://"))}
    out = {
        "summary": m.one_line(a.event),
        "description": "\n".join(f"{k}: {v}" for k, v in facts if k not in links),
    }
    names = {"Incident link": "incident_url", "Violation": "violation_url", "Chart": "chart_url"}
    out.update({names[k]: v for k, v in links.items() if k in names})
    if n.merged_into is not None and (url := n.merged_url()):
        out["merged_into"] = n.merged_into.id
        out["merged_into_url"] = url
    return out


def postable_alert(n: Notification, a: AlertView, resolved: bool) -> dict[str, Any]:
    """One ``postableAlert`` of the v2 API."""
    starts = n.created_at if n.reason == "test" else a.began
    alert: dict[str, Any] = {
        "labels": labels_of(n, a),
        "annotations": annotations_of(n, a),
        "startsAt": _time(starts),
        "generatorURL": (
            n.details_url(a.episode_id) if n.reason == "test" else m.chart_url(n.public_url, a.event)
        ),
    }
    if resolved:
        end = a.cleared.ts if a.cleared is not None else n.created_at
        alert["endsAt"] = _time(max(end, starts))  # Alertmanager refuses an end before the start
    elif n.reason == "test":
        alert["endsAt"] = _time(starts + TEST_LIFETIME)
    return alert


class AlertmanagerNotifier:
    """POSTs the group's alerts, firing and resolved, to one Alertmanager (or one of a cluster's
    peers: they gossip)."""

    kind = "alertmanager"

    def __init__(
        self,
        name: str,
        url: Secret,
        session: aiohttp.ClientSession,
        *,
        send_resolved: bool = True,
        resend_s: float = 60.0,
        destinations: Destinations | None = None,
    ) -> None:
        self.name = name
        self._url = url  # may hold basic-auth credentials (http://user:pass@am:9093)
        self._session = session
        self._destinations = destinations
        self.send_resolved = send_resolved
        self.resend_s = resend_s

    def build_payload(self, notification: Notification) -> list[dict[str, Any]]:
        n = notification
        return [postable_alert(n, a, False) for a in n.firing] + [
            postable_alert(n, a, True) for a in n.resolved
        ]

    async def send(self, payload: list[dict[str, Any]]) -> str:
        if not self._url:
            raise DeliveryError("no Alertmanager URL configured", retryable=False)
        if not payload:
            return "nothing to send"
        status, body = await post_json(
            self._session, alerts_url(self._url.get()), payload, destinations=self._destinations
        )
        return f"HTTP {status} {len(payload)} alert(s) {body.strip()[:80]}".strip()
