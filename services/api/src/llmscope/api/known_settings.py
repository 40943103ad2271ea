"""The settings the API accepts, with their types, defaults and which are secrets.

Values live in the ``settings`` table as JSON. Secrets (SMTP password, webhook URLs, routing keys)
are write-only through the API: reads say whether they are set, never what they are. The alerter
reads the table directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from llmscope.web.data import SettingError, SettingKind

# No NUL in any of them: Postgres's JSON cannot hold one (stated, so the API's document says it).
Email = Annotated[str, Meta(pattern=r"^[^@\s\x00]+@[^@\s\x00]+$", max_length=320)]
HttpsUrl = Annotated[str, Meta(pattern=r"^(https?://[^\s\x00]+)?$", max_length=2000)]  # "" clears it
Port = Annotated[int, Meta(ge=1, le=65535)]
Seconds = Annotated[int, Meta(ge=0, le=7 * 24 * 3600)]
Text = Annotated[str, Meta(max_length=2000, pattern=r"^[^\x00]*$")]


@dataclass(frozen=True, slots=True)
class SettingSpec:
    key: str
    kind: SettingKind
    type: Any
    default: Any
    description: str
    secret: bool = False
    choices: tuple[str, ...] = ()

    def validate(self, value: object) -> Any:
        try:
            return msgspec.convert(value, self.type, strict=True)
        except msgspec.ValidationError as exc:
            raise SettingError(self.key, str(exc)) from None


def _choice(key: str, choices: tuple[str, ...], default: str, description: str) -> SettingSpec:
    return SettingSpec(key, "choice", Literal[choices], default, description, choices=choices)


SPECS: tuple[SettingSpec, ...] = (
    _choice(
        "alert.min_severity",
        ("critical", "warning", "info"),
        "critical",
        "Lowest severity that sends a notification",
    ),
    SettingSpec(
        "alert.on_rules",
        "list",
        list[Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[^\x00]*$")]],
        [],
        "Rules that notify (empty: every rule at the minimum severity)",
    ),
    SettingSpec(
        "alert.group_wait_s", "int", Seconds, 30, "Seconds to gather a group before its first message"
    ),
    SettingSpec("alert.group_interval_s", "int", Seconds, 300, "Seconds between messages about one group"),
    SettingSpec(
        "alert.repeat_interval_s", "int", Seconds, 14400, "Seconds before reminding of an open group"
    ),
    SettingSpec("alert.email.enabled", "bool", bool, False, "Send alerts by email"),
    SettingSpec("alert.email.recipients", "list", list[Email], [], "Email recipients"),
    SettingSpec("alert.email.smtp_host", "text", Text, "", "SMTP server host"),
    SettingSpec("alert.email.smtp_port", "int", Port, 587, "SMTP server port"),
    SettingSpec("alert.email.smtp_user", "text", Text, "", "SMTP user name"),
    SettingSpec("alert.email.smtp_password", "text", Text, "", "SMTP password", secret=True),
    SettingSpec(
        "alert.email.from_addr", "text", Email, "llmscope@localhost", "Sender address of alert email"
    ),
    _choice("alert.email.tls", ("starttls", "ssl", "none"), "starttls", "SMTP transport security"),
    SettingSpec(
        "alert.email.verify_cert", "bool", bool, True, "Verify the SMTP server's certificate (STARTTLS/SSL)"
    ),
    SettingSpec(
        "alert.email.ca_file",
        "text",
        Text,
        "",
        "CA file (PEM) the alerter trusts for SMTP, e.g. a self-signed relay's certificate",
    ),
    SettingSpec("alert.slack.enabled", "bool", bool, False, "Send alerts to Slack"),
    SettingSpec("alert.slack.webhook_url", "text", HttpsUrl, "", "Slack incoming webhook URL", secret=True),
    SettingSpec(
        "alert.slack.bot_token",
        "text",
        Text,
        "",
        "Slack bot token (chat:write): threads an incident's updates; instead of the webhook",
        secret=True,
    ),
    SettingSpec("alert.slack.channel", "text", Text, "", "Slack channel id the bot posts to (C0123ABCD)"),
    SettingSpec("alert.webhook.enabled", "bool", bool, False, "Send alerts to a generic webhook"),
    SettingSpec("alert.webhook.url", "text", HttpsUrl, "", "Generic webhook URL", secret=True),
    SettingSpec(
        "alert.webhook.signing_secret",
        "text",
        Text,
        "",
        "HMAC-SHA256 key signing webhook bodies",
        secret=True,
    ),
    SettingSpec("alert.pagerduty.enabled", "bool", bool, False, "Send critical alerts to PagerDuty"),
    SettingSpec(
        "alert.pagerduty.routing_key", "text", Text, "", "PagerDuty Events v2 routing key", secret=True
    ),
    SettingSpec("alert.alertmanager.enabled", "bool", bool, False, "Send alerts to Prometheus Alertmanager"),
    SettingSpec(
        "alert.alertmanager.url",
        "text",
        HttpsUrl,
        "",
        "Alertmanager base URL (http://alertmanager:9093); may carry user:password@",
        secret=True,
    ),
    SettingSpec("alert.teams.enabled", "bool", bool, False, "Send alerts to Microsoft Teams"),
    SettingSpec("alert.teams.webhook_url", "text", HttpsUrl, "", "Teams Workflows webhook URL", secret=True),
    SettingSpec("alert.discord.enabled", "bool", bool, False, "Send alerts to Discord"),
    SettingSpec("alert.discord.webhook_url", "text", HttpsUrl, "", "Discord webhook URL", secret=True),
    SettingSpec("alert.mattermost.enabled", "bool", bool, False, "Send alerts to Mattermost"),
    SettingSpec(
        "alert.mattermost.webhook_url", "text", HttpsUrl, "", "Mattermost incoming webhook URL", secret=True
    ),
    _choice(
        "alert.tickets.tracker",
        ("none", "github", "jira", "gitlab"),
        "none",
        "Tracker critical incidents open a ticket in (replaces the LLMSCOPE_TICKETS_* variables)",
    ),
    SettingSpec(
        "alert.tickets.url",
        "text",
        HttpsUrl,
        "",
        "Tracker base URL (Jira: https://acme.atlassian.net; empty: api.github.com / gitlab.com)",
    ),
    SettingSpec(
        "alert.tickets.project",
        "text",
        Text,
        "",
        "owner/repo (GitHub), project key (Jira), project id or group/project path (GitLab)",
    ),
    SettingSpec("alert.tickets.token", "text", Text, "", "Tracker API token", secret=True),
    SettingSpec(
        "alert.tickets.user", "text", Text, "", "Jira Cloud account email (Basic auth); empty: Bearer token"
    ),
    SettingSpec(
        "alert.tickets.labels",
        "list",
        list[Annotated[str, Meta(min_length=1, max_length=100, pattern=r"^[^\x00]*$")]],
        ["llmscope"],
        "Labels of new tickets",
    ),
    _choice(
        "alert.tickets.min_severity",
        ("critical", "warning", "info"),
        "critical",
        "Least incident severity that opens a ticket",
    ),
    SettingSpec("alert.tickets.jira_issue_type", "text", Text, "Task", "Issue type of new Jira tickets"),
    SettingSpec("alert.tickets.jira_done", "text", Text, "Done", "Jira transition that closes a ticket"),
    _choice("alert.tickets.jira_api", ("2", "3"), "2", "Jira REST API version (3: rich text as ADF)"),
    SettingSpec("dashboard.base_url", "text", Text, "", "Public URL of this dashboard, for links in alerts"),
    SettingSpec("setup.completed", "bool", bool, False, "The first-run setup wizard was completed"),
)

BY_KEY: dict[str, SettingSpec] = {s.key: s for s in SPECS}

DESTINATIONS: dict[str, Literal["url", "host"]] = {
    # Every URL setting is one the alerter posts to: derived, so a new channel cannot miss it
    # (the Alertmanager, Teams, Discord and Mattermost URLs were saved unchecked).
    **{s.key: "url" for s in SPECS if s.type is HttpsUrl},
    "alert.email.smtp_host": "host",
    "alert.tickets.url": "url",
}
"""Settings the alerter connects to: checked against the outbound policy when saved."""


def spec(key: str) -> SettingSpec:
    try:
        return BY_KEY[key]
    except KeyError:
        raise SettingError(key, f"unknown setting (known: {', '.join(BY_KEY)})") from None
