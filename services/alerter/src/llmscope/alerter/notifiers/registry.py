"""Every channel kind, and building a notifier from a resolved channel."""

from __future__ import annotations

import aiohttp

from llmscope.alerter.config import ChannelSpec
from llmscope.alerter.notifiers.alertmanager import AlertmanagerNotifier
from llmscope.alerter.notifiers.base import Notifier
from llmscope.alerter.notifiers.discord import DiscordNotifier
from llmscope.alerter.notifiers.email import EmailNotifier
from llmscope.alerter.notifiers.mattermost import MattermostNotifier
from llmscope.alerter.notifiers.pagerduty import PagerDutyNotifier
from llmscope.alerter.notifiers.slack import SlackNotifier, ThreadStore
from llmscope.alerter.notifiers.teams import TeamsNotifier
from llmscope.alerter.notifiers.webhook import WebhookNotifier

NOTIFIER_CLASSES: dict[str, type] = {
    "email": EmailNotifier,
    "slack": SlackNotifier,
    "webhook": WebhookNotifier,
    "pagerduty": PagerDutyNotifier,
    "alertmanager": AlertmanagerNotifier,
    "teams": TeamsNotifier,
    "discord": DiscordNotifier,
    "mattermost": MattermostNotifier,
}
CHAT_CLASSES: dict[str, type[TeamsNotifier | DiscordNotifier | MattermostNotifier]] = {
    "teams": TeamsNotifier,
    "discord": DiscordNotifier,
    "mattermost": MattermostNotifier,
}


def build_notifier(
    spec: ChannelSpec, session: aiohttp.ClientSession, *, threads: ThreadStore | None = None
) -> Notifier:
    """``threads``: where Slack keeps each incident's first message (None: no threading)."""
    match spec.kind:
        case "email":
            assert spec.email is not None
            return EmailNotifier(
                spec.name, spec.email, send_resolved=spec.send_resolved, destinations=spec.destinations
            )
        case "slack":
            return SlackNotifier(
                spec.name,
                spec.url,
                session,
                send_resolved=spec.send_resolved,
                destinations=spec.destinations,
                token=spec.token,
                channel=spec.slack_channel,
                api_url=spec.api_url,
                threads=threads,
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
        case "alertmanager":
            return AlertmanagerNotifier(
                spec.name,
                spec.url,
                session,
                send_resolved=spec.send_resolved,
                resend_s=spec.resend_s,
                destinations=spec.destinations,
            )
        case "teams" | "discord" | "mattermost":
            return CHAT_CLASSES[spec.kind](
                spec.name, spec.url, session, send_resolved=spec.send_resolved, destinations=spec.destinations
            )
    raise ValueError(f"unknown channel kind {spec.kind!r}")
