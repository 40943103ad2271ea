"""Every channel kind, and building a notifier from a resolved channel."""

from __future__ import annotations

import aiohttp

from llmscope.alerter.config import ChannelSpec
from llmscope.alerter.notifiers.base import Notifier
from llmscope.alerter.notifiers.email import EmailNotifier
from llmscope.alerter.notifiers.pagerduty import PagerDutyNotifier
from llmscope.alerter.notifiers.slack import SlackNotifier
from llmscope.alerter.notifiers.webhook import WebhookNotifier

NOTIFIER_CLASSES: dict[str, type] = {
    "email": EmailNotifier,
    "slack": SlackNotifier,
    "webhook": WebhookNotifier,
    "pagerduty": PagerDutyNotifier,
}


def build_notifier(spec: ChannelSpec, session: aiohttp.ClientSession) -> Notifier:
    match spec.kind:
        case "email":
            assert spec.email is not None
            return EmailNotifier(
                spec.name, spec.email, send_resolved=spec.send_resolved, destinations=spec.destinations
            )
        case "slack":
            return SlackNotifier(
                spec.name, spec.url, session, send_resolved=spec.send_resolved, destinations=spec.destinations
            )
        case "webhook":
            return WebhookNotifier(
                spec.name,
                spec.url,
                session,
                secret=spec.secret,
                send_resolved=spec.send_resolved,
                destinations=spec.destinations,
            )
        case "pagerduty":
            return PagerDutyNotifier(
                spec.name,
                spec.secret,
                session,
                events_url=spec.events_url,
                send_resolved=spec.send_resolved,
                destinations=spec.destinations,
            )
    raise ValueError(f"unknown channel kind {spec.kind!r}")
