"""The settings page's layout: stored settings grouped into forms by concern, with labels and help.

Each :class:`Section` is one form with one Save button; a value that does not parse or that the
API refuses is shown under its own field. Settings the environment fixes (retention, the API key,
sessions) are shown read-only with the variable that changes them: they are read once at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmscope.web.data import SettingError, SettingInfo


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """How one stored setting reads on the page."""

    key: str
    label: str
    help: str = ""
    placeholder: str = ""


@dataclass(frozen=True, slots=True)
class Section:
    """One form of the settings page."""

    id: str
    title: str
    help: str
    fields: tuple[FieldSpec, ...]
    group: str


@dataclass(frozen=True, slots=True)
class FixedSetting:
    """A setting the environment fixes at start: shown, not edited here."""

    label: str
    value: str
    env: str
    help: str = ""


@dataclass(frozen=True, slots=True)
class FieldView:
    """A field as rendered: its spec, the stored setting, and the error found for it."""

    spec: FieldSpec
    setting: SettingInfo
    error: str = ""
    raw: str | None = None
    """What was typed, shown again next to its error so it can be corrected."""


@dataclass(frozen=True, slots=True)
class SectionView:
    section: Section
    fields: list[FieldView]
    message: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    by: str | None = None
    """The name its ``by`` field shows; None: the one the browser remembers."""


WRITE_ONLY = "Write-only: blank keeps the stored one."
SECTIONS: tuple[Section, ...] = (
    Section(
        "policy",
        "What notifies",
        "Violations are always recorded and shown; these decide which of them send a message, "
        "and how bursts are grouped into one (as Alertmanager does).",
        (
            FieldSpec(
                "alert.min_severity",
                "Lowest severity that notifies",
                "critical pages only on outages and sustained shifts; warning adds EWMA and "
                "Nelson test 1; info adds every run rule (noisy).",
            ),
            FieldSpec(
                "alert.on_rules",
                "Only these rules",
                "Rule codes, comma-separated (CUSUM, EWMA, SPIKE, TAIL, AVAILABILITY, R1..R8). "
                "Empty: every rule at or above the severity.",
                "e.g. CUSUM, AVAILABILITY",
            ),
            FieldSpec(
                "alert.group_wait_s",
                "Group wait (s)",
                "How long to gather violations of one group before its first message.",
            ),
            FieldSpec(
                "alert.group_interval_s",
                "Group interval (s)",
                "The least time between two messages about one group.",
            ),
            FieldSpec(
                "alert.repeat_interval_s",
                "Repeat interval (s)",
                "When to remind of a group still open and not acknowledged.",
            ),
        ),
        "alerting",
    ),
    Section(
        "email",
        "Email",
        "Alerts by SMTP. The password is write-only: leave it blank to keep the stored one.",
        (
            FieldSpec("alert.email.enabled", "Send alerts by email"),
            FieldSpec(
                "alert.email.recipients", "Recipients", "Addresses, comma-separated.", "ops@example.com"
            ),
            FieldSpec("alert.email.smtp_host", "SMTP host", "", "smtp.example.com"),
            FieldSpec("alert.email.smtp_port", "SMTP port", "587 for STARTTLS, 465 for SSL."),
            FieldSpec("alert.email.tls", "Transport security"),
            FieldSpec("alert.email.verify_cert", "Verify the server's certificate (STARTTLS/SSL)"),
            FieldSpec(
                "alert.email.ca_file",
                "CA file (PEM)",
                "On the alerter's host: a relay with a self-signed certificate, or its CA.",
            ),
            FieldSpec("alert.email.smtp_user", "SMTP user"),
            FieldSpec("alert.email.smtp_password", "SMTP password"),
            FieldSpec("alert.email.from_addr", "Sender address"),
        ),
        "channels",
    ),
    Section(
        "slack",
        "Slack",
        "An incoming webhook of the channel to post to.",
        (
            FieldSpec("alert.slack.enabled", "Send alerts to Slack"),
            FieldSpec(
                "alert.slack.webhook_url",
                "Webhook URL",
                "Write-only: blank keeps the stored one.",
                "https://hooks.slack.com/services/…",
            ),
            FieldSpec(
                "alert.slack.bot_token",
                "Bot token (chat:write)",
                "Instead of the webhook: threads an incident's updates. Write-only.",
            ),
            FieldSpec("alert.slack.channel", "Channel id the bot posts to", "", "C0123ABCD"),
        ),
        "channels",
    ),
    Section(
        "webhook",
        "Webhook",
        "A JSON POST per notification, signed with HMAC-SHA256 when a key is set.",
        (
            FieldSpec("alert.webhook.enabled", "Send alerts to the webhook"),
            FieldSpec("alert.webhook.url", "URL", "Write-only: blank keeps the stored one.", "https://…"),
            FieldSpec(
                "alert.webhook.signing_secret", "Signing key", "Write-only: blank keeps the stored one."
            ),
        ),
        "channels",
    ),
    Section(
        "pagerduty",
        "PagerDuty",
        "Critical alerts only, through the Events API v2.",
        (
            FieldSpec("alert.pagerduty.enabled", "Send critical alerts to PagerDuty"),
            FieldSpec(
                "alert.pagerduty.routing_key", "Routing key", "Write-only: blank keeps the stored one."
            ),
        ),
        "channels",
    ),
    # Every channel the setup wizard configures is here too, to be seen, changed and switched off.
    Section(
        "alertmanager",
        "Alertmanager",
        "Alerts posted to Prometheus Alertmanager's API, to route with the rest of your alerts.",
        (
            FieldSpec("alert.alertmanager.enabled", "Send alerts to Alertmanager"),
            FieldSpec(
                "alert.alertmanager.url",
                "Base URL",
                "May carry user:password@. Write-only: blank keeps the stored one.",
                "http://alertmanager:9093",
            ),
        ),
        "channels",
    ),
    *(
        Section(
            kind,
            title,
            f"A message per notification to a {title} {what}.",
            (
                FieldSpec(f"alert.{kind}.enabled", f"Send alerts to {title}"),
                FieldSpec(f"alert.{kind}.webhook_url", "Webhook URL", WRITE_ONLY),
            ),
            "channels",
        )
        for kind, title, what in (
            ("teams", "Teams", "Workflows webhook"),
            ("discord", "Discord", "channel webhook"),
            ("mattermost", "Mattermost", "incoming webhook"),
        )
    ),
    Section(
        "tickets",
        "Tickets",
        "A critical incident opens one ticket in the team's tracker; updates and the resolution "
        "become comments. Chosen here, the tracker is configured here alone (the alerter's "
        "LLMSCOPE_TICKETS_* variables then do not apply). The token is write-only: leave it blank "
        "to keep the stored one.",
        (
            FieldSpec("alert.tickets.tracker", "Tracker", "none: no tickets."),
            FieldSpec(
                "alert.tickets.project",
                "Project",
                "owner/repo on GitHub, a project key on Jira, a project id or group/project on GitLab.",
                "acme/llm-platform",
            ),
            FieldSpec("alert.tickets.token", "API token", "Write-only: blank keeps the stored one."),
            FieldSpec(
                "alert.tickets.url",
                "Tracker URL",
                "Required for Jira; empty: api.github.com or gitlab.com.",
                "https://acme.atlassian.net",
            ),
            FieldSpec(
                "alert.tickets.user", "Jira account email", "Jira Cloud (Basic auth with an API token)."
            ),
            FieldSpec("alert.tickets.labels", "Labels", "Comma-separated.", "llmscope"),
            FieldSpec("alert.tickets.min_severity", "Least severity that opens a ticket"),
            FieldSpec("alert.tickets.jira_issue_type", "Jira issue type"),
            FieldSpec("alert.tickets.jira_done", "Jira closing transition"),
            FieldSpec("alert.tickets.jira_api", "Jira REST API version"),
        ),
        "channels",
    ),
    Section(
        "dashboard",
        "Dashboard",
        "How alerts link back here.",
        (
            FieldSpec(
                "dashboard.base_url",
                "Public URL",
                "The address people open this dashboard at; links in alerts start with it.",
                "https://llmscope.example.com",
            ),
        ),
        "alerting",
    ),
)
BY_ID: dict[str, Section] = {s.id: s for s in SECTIONS}


def section_view(
    section: Section,
    settings: list[SettingInfo],
    *,
    message: str = "",
    errors: dict[str, str] | None = None,
    typed: dict[str, str] | None = None,
    by: str | None = None,
) -> SectionView:
    """The section's fields over the stored settings (keys the API does not know are left out);
    ``by``: the name its form shows (None: the remembered one)."""
    known = {s.key: s for s in settings}
    errs = errors or {}
    fields = [
        FieldView(f, known[f.key], errs.get(f.key, ""), (typed or {}).get(f.key) if f.key in errs else None)
        for f in section.fields
        if f.key in known
    ]
    return SectionView(section, fields, message, errs, by)


def parse_field(setting: SettingInfo, raw: str | None) -> object:
    """Turn a form field into the setting's JSON value (the API validates it further)."""
    text = (raw or "").strip()
    if setting.kind == "bool":
        return text.lower() in {"1", "true", "on", "yes"}
    if setting.kind == "list":
        return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]
    if setting.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise SettingError(setting.key, f"expected a whole number, got {text!r}") from None
    if setting.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise SettingError(setting.key, f"expected a number, got {text!r}") from None
    return text


NOT_SET = ""
"""A choice field's first option: nothing stored, the environment's or the default value applies."""
RESET = "reset"
"""The form field naming the stored settings to delete (the "use the default" boxes)."""


@dataclass(slots=True)
class SectionChanges:
    """What a section's Save changes: values to store, stored keys to delete, and what was typed."""

    values: dict[str, object] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    typed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def stored(setting: SettingInfo) -> bool:
    """Whether the settings table holds a value for it (else the page shows the default)."""
    return setting.updated_at is not None


def section_changes(
    section: Section, settings: Mapping[str, SettingInfo], form: Mapping[str, list[str]]
) -> SectionChanges:
    """Only what the user changed: a field left as the page showed it is not stored (a default
    saved back would pin itself over the environment: a tracker "none" turns the alerter's
    LLMSCOPE_TICKETS_* tracker off). A ticked "use the default" box, or a choice set to "not set",
    deletes the stored value."""
    out = SectionChanges()
    reset = set(form.get(RESET, ()))
    for spec in section.fields:
        setting = settings.get(spec.key)
        if setting is None:
            continue
        # A checkbox sends "true" after its hidden "false": the last value is the one ticked.
        raw = form.get(spec.key, [])
        text = raw[-1] if raw else ""
        out.typed[spec.key] = text
        if spec.key in reset or (setting.kind == "choice" and text.strip() == NOT_SET):
            if stored(setting):
                out.remove.append(spec.key)
            continue
        if setting.secret and not text.strip():
            continue  # write-only: blank keeps the stored secret
        try:
            value = parse_field(setting, text)
        except SettingError as exc:
            out.errors[spec.key] = exc.message
            continue
        if setting.secret:
            out.values[spec.key] = value  # never shown, so never "left as shown"
            continue
        # Unstored, a choice shows "not set": any option picked is a choice made (tracker none).
        if value == setting.value and (stored(setting) or setting.kind != "choice"):
            continue
        out.values[spec.key] = value
    return out


def _days(value: float) -> str:
    return "forever" if value <= 0 else f"{value:g} days"


def _retention(key: str, retention_days: dict[str, float | None]) -> str:
    """``30 days``; a minute retention not set is the hours' (``400 days (not set: as the hourly
    rollups)``)."""
    days = retention_days[key]
    if days is not None:
        return _days(days)
    hours = retention_days.get("rollups")
    return f"{_days(hours)} (not set: as the hourly rollups)" if hours is not None else "not set"


def fixed_settings(
    retention_days: dict[str, float | None],
    session_days: float,
    status_public: bool,
    scoped_keys: frozenset[str] = frozenset(),
) -> dict[str, list[FixedSetting]]:
    """Retention and authentication, as the environment set them at start."""
    names = {
        "telemetry": ("Raw probes", "LLMSCOPE_RETENTION_TELEMETRY_DAYS", "Every probe with its timings."),
        "rollups": (
            "Hourly rollups",
            "LLMSCOPE_RETENTION_ROLLUP_DAYS",
            "Per series and hour: what the 7/30-day charts, the comparison and the report read.",
        ),
        "minute_rollups": (
            "Minute rollups",
            "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS",
            "Per series and minute: what the overview, windows up to 5 days and the status page's"
            " week read; 7 days or more, at most the hourly rollups' days.",
        ),
        "violations": (
            "Violations and resolved incidents",
            "LLMSCOPE_RETENTION_VIOLATIONS_DAYS",
            "",
        ),
        "deadletters": (
            "Dead letters",
            "LLMSCOPE_RETENTION_DEADLETTER_DAYS",
            "Messages no service could read.",
        ),
    }
    retention = [
        FixedSetting(label, _retention(key, retention_days), env, help)
        for key, (label, env, help) in names.items()
        if key in retention_days
    ]
    auth = [
        FixedSetting(
            "Admin key",
            "set (never shown)",
            "LLMSCOPE_API_KEY",
            "Scope admin: every API route, the dashboard and its changes; a bearer token, or typed at login.",
        ),
        FixedSetting(
            "Read key",
            "set (never shown)" if "read" in scoped_keys else "not set (off)",
            "LLMSCOPE_READ_KEY",
            "Scope read: GET routes under /api and viewing the dashboard; a login with it changes nothing.",
        ),
        FixedSetting(
            "Ingest key",
            "set (never shown)" if "ingest" in scoped_keys else "not set (off)",
            "LLMSCOPE_INGEST_KEY",
            "Scope ingest: POST /api/stats and POST /v1/traces only (an external prober's key); no login.",
        ),
        FixedSetting(
            "Session lifetime", _days(session_days), "LLMSCOPE_SESSION_DAYS", "How long a login lasts."
        ),
        FixedSetting(
            "Public status page",
            "yes" if status_public else "no (login required)",
            "LLMSCOPE_STATUS_PUBLIC",
            "Whether /status and the badges are readable without a login.",
        ),
    ]
    return {"retention": retention, "auth": auth}
