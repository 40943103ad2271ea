"""Every channel's message for one notification, as its reader gets it: the texts golden files
hold (``tests/alerter/test_messages.py``) and message tests search (``test_availability_messages.py``)."""

from __future__ import annotations

import json
from typing import Any

from llmscope.alerter.notifiers.alertmanager import AlertmanagerNotifier
from llmscope.alerter.notifiers.base import Notification
from llmscope.alerter.notifiers.discord import DiscordNotifier
from llmscope.alerter.notifiers.email import EmailConfig, EmailNotifier
from llmscope.alerter.notifiers.mattermost import MattermostNotifier
from llmscope.alerter.notifiers.pagerduty import PagerDutyNotifier
from llmscope.alerter.notifiers.slack import SlackNotifier
from llmscope.alerter.notifiers.teams import TeamsNotifier
from llmscope.alerter.notifiers.webhook import WebhookNotifier
from llmscope.config.env import Secret


def pretty(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def channel_texts(n: Notification, *, alertmanager: Notification | None = None) -> dict[str, str]:
    """File suffix -> what each channel sends for ``n``: ``email.txt`` (its Subject, In-Reply-To
    and plain-text body), ``slack.json`` (incoming webhook), ``slack-bot.json`` (chat.postMessage
    and its thread), ``webhook.json``, ``pagerduty.json``, ``alertmanager.json`` (given
    ``alertmanager``, what that channel is given instead of ``n``: a merge's closing message
    carries its alerts), ``teams.json``, ``discord.json``, ``mattermost.json``."""
    mail = EmailNotifier(
        "oncall", EmailConfig(host="h", sender="scope@example.com", recipients=("oncall@example.com",))
    )
    msg = mail.build_payload(n)
    text = msg.get_body(("plain",))
    assert text is not None
    slack = SlackNotifier("oncall", Secret("http://x"), None).build_payload(n).body  # type: ignore[arg-type]
    _, hook_body = WebhookNotifier("oncall", Secret("http://x"), None).build_payload(n)  # type: ignore[arg-type]
    pd = PagerDutyNotifier("oncall", Secret("k"), None).build_payload(n)  # type: ignore[arg-type]
    bot = SlackNotifier("oncall", Secret(""), None, token=Secret("xoxb-1"), channel="C0ONCALL")  # type: ignore[arg-type]
    bot_payload = bot.build_payload(n)
    am = AlertmanagerNotifier("oncall", Secret("http://x"), None).build_payload(alertmanager or n)  # type: ignore[arg-type]
    chats = {
        kind: cls("oncall", Secret("http://x"), None).build_payload(n)  # type: ignore[arg-type]
        for kind, cls in (
            ("teams", TeamsNotifier),
            ("discord", DiscordNotifier),
            ("mattermost", MattermostNotifier),
        )
    }
    headers = "".join(f"{k}: {msg[k]}\n" for k in ("Subject", "In-Reply-To") if msg[k])
    return {
        "email.txt": headers + "\n" + text.get_content(),
        "slack.json": pretty(slack),
        "webhook.json": pretty(json.loads(hook_body)),
        "pagerduty.json": pretty(pd),
        "slack-bot.json": pretty(
            {
                "thread_key": bot_payload.thread_key,
                "broadcast_to_channel": bot_payload.broadcast,
                "body": bot_payload.body,
            }
        ),
        "alertmanager.json": pretty(am),
        **{f"{kind}.json": pretty(body) for kind, body in chats.items()},
    }
