"""The alerter's routes, channels and silences: a YAML/TOML file, the environment and API settings.

File (``LLMSCOPE_ALERTER_CONFIG``, ``.yaml``/``.yml`` or ``.toml``; unknown keys are errors)::

    defaults: {group_wait: 30s, group_interval: 5m, repeat_interval: 4h, group_by: [incident]}
    channels:
      - {name: oncall, kind: email, host: smtp.example.com, port: 587, security: starttls,
         username: alerts, password_env: SMTP_PASSWORD, sender: llmscope@example.com,
         recipients: [a@example.com, b@example.com]}
      - {name: chat, kind: slack, url_env: SLACK_WEBHOOK_URL}
      - {name: hooks, kind: webhook, url: https://hooks.example.com/llmscope, secret_env: HOOK_SECRET}
      - {name: pager, kind: pagerduty, routing_key_env: PD_ROUTING_KEY}
      - {name: am, kind: alertmanager, url: http://alertmanager:9093, resend_interval: 60s}
      - {name: teams, kind: teams, url_env: TEAMS_WEBHOOK_URL}
      - {name: discord, kind: discord, url_env: DISCORD_WEBHOOK_URL}
      - {name: mm, kind: mattermost, url_env: MATTERMOST_WEBHOOK_URL}
      - {name: threads, kind: slack, token_env: SLACK_BOT_TOKEN, slack_channel: C0123ABCD}
    routes:          # first match wins unless continue_matching: true
      - {name: pager, channels: [pager, chat], severities: [critical], rules: [R1], models: ["llama*"]}
      - {name: rest, channels: [oncall], severities: [critical, warning], repeat_interval: 1h}
    silences:
      - {id: nightly, kind: maintenance, models: ["llama*"], reason: reindex, author: ops,
         weekly: {days: [sat, sun], start: "02:00", end: "04:00", timezone: Europe/Paris}}
      - {id: patch-sunday, kind: maintenance, reason: OS patches, author: ops,
         monthly: {weekdays: ["first sun"], start: "02:00", end: "04:00", timezone: Europe/Berlin}}
      - {id: billing-run, reason: month-end batch, author: ops,
         monthly: {days: [15], start: "22:00", end: "01:00"}}

A silence recurs at most one way, ``weekly`` or ``monthly``; ``starts_at``/``ends_at`` bound it.
``monthly`` opens on its ``days`` of the month (1..31; a day a month lacks does not occur in it)
and on its ``weekdays`` (``first|second|third|fourth|last`` and ``mon``..``sun``); an ``end`` at or
before ``start`` runs past midnight, into the next month if need be.

Secrets are never written in the file: ``*_env`` names the environment variable holding them.
Durations are seconds or strings like ``30s``, ``5m``, ``4h``, ``1d``.

A Slack channel posts to an incoming webhook (``url_env``) or, with a bot token (``token_env``
and ``slack_channel``), through ``chat.postMessage``, which threads an incident's updates under
its first message. An ``alertmanager`` channel re-sends its firing alerts every
``resend_interval`` (keep it below Alertmanager's ``resolve_timeout``, 5m by default).

Without routes in the file, one ``default`` route sends the severities of
``LLMSCOPE_ALERTER_SEVERITIES`` (default ``critical``) to every enabled channel. Channels also
come from the environment (``LLMSCOPE_SMTP_HOST``, ``LLMSCOPE_SLACK_WEBHOOK_URL``,
``LLMSCOPE_WEBHOOK_URL``, ``LLMSCOPE_PAGERDUTY_ROUTING_KEY``, ``LLMSCOPE_ALERTMANAGER_URL``,
``LLMSCOPE_TEAMS_WEBHOOK_URL``, ``LLMSCOPE_DISCORD_WEBHOOK_URL``,
``LLMSCOPE_MATTERMOST_WEBHOOK_URL``; each channel named after its kind) and from the API's
settings (its ``settings`` table, mirrored into the settings bucket the alerter reads), which
wins over both for the channels named after their kind and for the enable switches
(an explicit ``*_enabled: false`` disables every channel of that kind). A channel whose address
comes from the settings (SMTP host, Slack or webhook URL, PagerDuty key) is off unless its switch
is true, as the API shows it (``alert.<kind>.enabled`` defaults to false); channels of the file
or the environment stay enabled without a switch. Keys read, in the API's
names (``llmscope.api.known_settings``) or the seeds' flat names: ``alert.on_rules`` /
``alert_on_rule`` (rules that notify at all; empty: every rule), ``alert.min_severity`` (the
default route's lowest severity), ``alert.group_wait_s``, ``alert.group_interval_s``,
``alert.repeat_interval_s`` (default timers; the file's ``defaults`` and routes still win),
``alert.email.*`` / ``smtp_host``, ``smtp_port``, ``smtp_security``, ``smtp_user``,
``smtp_password``, ``smtp_from``, ``smtp_to``, ``email_enabled``; ``alert.slack.*`` /
``slack_webhook_url``, ``slack_enabled``, ``bot_token``,
``channel``; ``alert.webhook.*`` (``url``, ``signing_secret``);
``alert.pagerduty.*`` (``routing_key``); ``alert.alertmanager.*`` (``url``);
``alert.teams.*``, ``alert.discord.*``, ``alert.mattermost.*`` (``webhook_url``);
``dashboard.base_url`` (links in messages).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, time
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from llmscope.alerter.destinations import Destinations
from llmscope.alerter.notifiers.email import EmailConfig, Security
from llmscope.alerter.notifiers.pagerduty import DEFAULT_EVENTS_URL
from llmscope.alerter.notifiers.slack import DEFAULT_SLACK_API
from llmscope.alerter.routing import DEFAULT_GROUP_BY, Route
from llmscope.alerter.silences import Monthly, Silence, Weekly, parse_days, parse_nth_weekdays
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.proto.violation import SEVERITIES, Severity

Duration = float | str
ChannelKind = Literal[
    "email", "slack", "webhook", "pagerduty", "alertmanager", "teams", "discord", "mattermost"
]
KINDS: tuple[ChannelKind, ...] = (
    "email",
    "slack",
    "webhook",
    "pagerduty",
    "alertmanager",
    "teams",
    "discord",
    "mattermost",
)
CHAT_KINDS: tuple[ChannelKind, ...] = ("teams", "discord", "mattermost")
"""Incoming-webhook chats whose URL is the credential (as Slack's)."""
DEFAULT_RESEND_S = 60.0

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Duration, what: str) -> float:
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
        if not match:
            raise ConfigError(f"{what}={value!r}: expected seconds or a duration like 30s, 5m, 4h")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0:
        raise ConfigError(f"{what}={value!r}: must not be negative")
    return seconds


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class _ChannelFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What every channel of the file has; each kind adds its own keys and its ``kind`` tag."""

    name: str
    send_resolved: bool = True
    enabled: bool = True


class EmailChannelFile(_ChannelFile, frozen=True, kw_only=True, tag="email", tag_field="kind"):
    host: str
    sender: str
    recipients: list[str]
    port: int = 587
    security: Security = "starttls"
    username: str = ""
    password_env: str = ""
    validate_certs: bool = True
    ca_file: str = ""


class SlackChannelFile(_ChannelFile, frozen=True, kw_only=True, tag="slack", tag_field="kind"):
    url_env: str = ""
    token_env: str = ""
    """a bot token (xoxb-...): chat.postMessage, which threads an incident's updates"""
    slack_channel: str = ""
    api_url: str = DEFAULT_SLACK_API


class AlertmanagerChannelFile(_ChannelFile, frozen=True, kw_only=True, tag="alertmanager", tag_field="kind"):
    url: str = ""
    url_env: str = ""
    resend_interval: Duration = DEFAULT_RESEND_S


class _ChatChannelFile(_ChannelFile, frozen=True, kw_only=True):
    """An incoming-webhook chat: its URL is the credential, so it only comes from the environment."""

    url_env: str


class TeamsChannelFile(_ChatChannelFile, frozen=True, kw_only=True, tag="teams", tag_field="kind"):
    pass


class DiscordChannelFile(_ChatChannelFile, frozen=True, kw_only=True, tag="discord", tag_field="kind"):
    pass


class MattermostChannelFile(_ChatChannelFile, frozen=True, kw_only=True, tag="mattermost", tag_field="kind"):
    pass


class WebhookChannelFile(_ChannelFile, frozen=True, kw_only=True, tag="webhook", tag_field="kind"):
    url: str = ""
    url_env: str = ""
    secret_env: str = ""


class PagerDutyChannelFile(_ChannelFile, frozen=True, kw_only=True, tag="pagerduty", tag_field="kind"):
    routing_key_env: str
    events_url: str = DEFAULT_EVENTS_URL


ChannelFile = (
    EmailChannelFile
    | SlackChannelFile
    | WebhookChannelFile
    | PagerDutyChannelFile
    | AlertmanagerChannelFile
    | TeamsChannelFile
    | DiscordChannelFile
    | MattermostChannelFile
)


class DefaultsFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    group_by: list[str] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None


class RouteFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    channels: list[str]
    severities: list[Severity] = msgspec.field(default_factory=lambda: ["critical"])
    rules: list[str] = msgspec.field(default_factory=list)
    models: list[str] = msgspec.field(default_factory=list)
    providers: list[str] = msgspec.field(default_factory=list)
    hosts: list[str] = msgspec.field(default_factory=list)
    group_by: list[str] | None = None
    group_wait: Duration | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    continue_matching: bool = False


class WeeklyFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days: list[str]
    start: str
    end: str
    timezone: str = "UTC"


class MonthlyFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    days: list[int] = msgspec.field(default_factory=list)
    weekdays: list[str] = msgspec.field(default_factory=list)
    start: str
    end: str
    timezone: str = "UTC"


class SilenceFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    id: str
    reason: str
    author: str
    kind: Literal["silence", "maintenance"] = "silence"
    providers: list[str] = msgspec.field(default_factory=list)
    models: list[str] = msgspec.field(default_factory=list)
    rules: list[str] = msgspec.field(default_factory=list)
    hosts: list[str] = msgspec.field(default_factory=list)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekly: WeeklyFile | None = None
    monthly: MonthlyFile | None = None


class AlerterFile(_Strict, frozen=True, kw_only=True, forbid_unknown_fields=True):
    defaults: DefaultsFile | None = None
    channels: list[ChannelFile] = msgspec.field(default_factory=list)
    routes: list[RouteFile] = msgspec.field(default_factory=list)
    silences: list[SilenceFile] = msgspec.field(default_factory=list)


def load_file(path: Path) -> AlerterFile:
    """Parse and validate a config file; errors name the file and the field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG={path}: cannot read: {exc}") from exc
    try:
        raw: Any = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
        return msgspec.convert(raw or {}, AlerterFile)
    except (msgspec.ValidationError, yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG={path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A resolved channel: kind, switches and credentials (as Secrets)."""

    name: str
    kind: ChannelKind
    enabled: bool = True
    send_resolved: bool = True
    email: EmailConfig | None = None
    url: Secret = field(default_factory=lambda: Secret(""))
    secret: Secret = field(default_factory=lambda: Secret(""))
    events_url: str = DEFAULT_EVENTS_URL
    resend_s: float = 0.0
    """Re-send firing alerts this often (Alertmanager expires alerts that are not); 0: never."""
    token: Secret = field(default_factory=lambda: Secret(""))
    """Slack bot token: chat.postMessage (threads) instead of the incoming webhook"""
    slack_channel: str = ""
    api_url: str = DEFAULT_SLACK_API
    destinations: Destinations | None = None
    """Checked before every send (from ``LLMSCOPE_ALERT_ALLOWED_HOSTS``); None only in unit tests."""


@dataclass(frozen=True, slots=True)
class Timings:
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """Everything routing needs at one moment."""

    channels: Mapping[str, ChannelSpec]
    routes: tuple[Route, ...]
    silences: tuple[Silence, ...] = ()
    allowed_rules: frozenset[str] | None = None
    public_url: str | None = None

    def enabled_channels(self) -> list[ChannelSpec]:
        return [c for c in self.channels.values() if c.enabled]


def _secret_from(env: Env, var: str, what: str) -> Secret:
    if not var:
        return Secret("")
    value = env.raw(var)
    if value is None:
        raise ConfigError(f"{var}: not set, but {what} reads its secret from it")
    return Secret(value)


def _url_from(env: Env, url: str, url_env: str, what: str) -> Secret:
    """The URL written in the file, or the secret one ``url_env`` names; one is required."""
    value = _secret_from(env, url_env, what) if url_env else Secret(url)
    if not value:
        raise ConfigError(f"{what}: needs url or url_env")
    return value


def _channel_from_file(c: ChannelFile, env: Env, timeout: float) -> ChannelSpec:
    what = f"channel {c.name!r}"
    match c:
        case EmailChannelFile():
            cfg = EmailConfig(
                host=c.host,
                port=c.port,
                security=c.security,
                username=c.username,
                password=_secret_from(env, c.password_env, what),
                sender=c.sender,
                recipients=tuple(c.recipients),
                validate_certs=c.validate_certs,
                ca_file=c.ca_file,
                timeout=timeout,
            )
            return ChannelSpec(c.name, "email", c.enabled, c.send_resolved, email=cfg)
        case SlackChannelFile():
            token = _secret_from(env, c.token_env, what)
            if token and not c.slack_channel:
                raise ConfigError(f"{what}: token_env needs slack_channel (the channel id to post to)")
            if not token and not c.url_env:
                raise ConfigError(f"{what}: needs url_env (incoming webhook) or token_env (bot token)")
            return ChannelSpec(
                c.name,
                "slack",
                c.enabled,
                c.send_resolved,
                url=_secret_from(env, c.url_env, what),
                token=token,
                slack_channel=c.slack_channel,
                api_url=c.api_url,
            )
        case AlertmanagerChannelFile():
            am_url = _url_from(env, c.url, c.url_env, what)
            resend = parse_duration(c.resend_interval, f"channels[{c.name}].resend_interval")
            return ChannelSpec(
                c.name, "alertmanager", c.enabled, c.send_resolved, url=am_url, resend_s=resend
            )
        case TeamsChannelFile() | DiscordChannelFile() | MattermostChannelFile():
            kind: ChannelKind = c.__struct_config__.tag  # type: ignore[assignment]  # the file's `kind`
            return ChannelSpec(
                c.name, kind, c.enabled, c.send_resolved, url=_secret_from(env, c.url_env, what)
            )
        case WebhookChannelFile():
            url = _url_from(env, c.url, c.url_env, what)
            secret = _secret_from(env, c.secret_env, what)
            return ChannelSpec(c.name, "webhook", c.enabled, c.send_resolved, url=url, secret=secret)
        case PagerDutyChannelFile():
            key = _secret_from(env, c.routing_key_env, what)
            return ChannelSpec(
                c.name, "pagerduty", c.enabled, c.send_resolved, secret=key, events_url=c.events_url
            )
    raise AssertionError(c)  # pragma: no cover


def channels_from_env(env: Env, timeout: float) -> dict[str, ChannelSpec]:
    """The channels the environment alone configures."""
    out: dict[str, ChannelSpec] = {}
    host = env.optional_text("LLMSCOPE_SMTP_HOST")
    if host:
        security = env.choice("LLMSCOPE_SMTP_SECURITY", "starttls", ("none", "starttls", "ssl"))
        out["email"] = ChannelSpec(
            "email",
            "email",
            email=EmailConfig(
                host=host,
                port=env.integer("LLMSCOPE_SMTP_PORT", 465 if security == "ssl" else 587, min=1, max=65535),
                security=security,  # type: ignore[arg-type]
                username=env.text("LLMSCOPE_SMTP_USER", ""),
                password=env.secret("LLMSCOPE_SMTP_PASSWORD"),
                sender=env.text("LLMSCOPE_SMTP_FROM", "llmscope@localhost"),
                recipients=env.items("LLMSCOPE_ALERT_EMAIL_TO"),
                validate_certs=env.choice("LLMSCOPE_SMTP_VERIFY_CERT", "true", ("true", "false")) == "true",
                ca_file=env.text("LLMSCOPE_SMTP_CA_FILE", ""),
                timeout=timeout,
            ),
        )
    slack = env.secret_url("LLMSCOPE_SLACK_WEBHOOK_URL")
    slack_token = env.secret("LLMSCOPE_SLACK_BOT_TOKEN")
    if slack or slack_token:
        slack_channel = env.text("LLMSCOPE_SLACK_CHANNEL", "")
        if slack_token and not slack_channel:
            raise ConfigError("LLMSCOPE_SLACK_CHANNEL: required with LLMSCOPE_SLACK_BOT_TOKEN")
        out["slack"] = ChannelSpec(
            "slack",
            "slack",
            url=slack,
            token=slack_token,
            slack_channel=slack_channel,
            api_url=env.url("LLMSCOPE_SLACK_API_URL", DEFAULT_SLACK_API, schemes=("http", "https"))
            or DEFAULT_SLACK_API,
        )
    hook = env.secret_url("LLMSCOPE_WEBHOOK_URL")
    if hook:
        out["webhook"] = ChannelSpec(
            "webhook", "webhook", url=hook, secret=env.secret("LLMSCOPE_WEBHOOK_SECRET")
        )
    key = env.secret("LLMSCOPE_PAGERDUTY_ROUTING_KEY")
    if key:
        events = env.url("LLMSCOPE_PAGERDUTY_EVENTS_URL", DEFAULT_EVENTS_URL, schemes=("http", "https"))
        out["pagerduty"] = ChannelSpec("pagerduty", "pagerduty", secret=key, events_url=events or "")
    am = env.secret_url("LLMSCOPE_ALERTMANAGER_URL")
    if am:
        resend = env.number("LLMSCOPE_ALERTMANAGER_RESEND_S", DEFAULT_RESEND_S, min=1)
        out["alertmanager"] = ChannelSpec("alertmanager", "alertmanager", url=am, resend_s=resend)
    for kind in CHAT_KINDS:
        url = env.secret_url(f"LLMSCOPE_{kind.upper()}_WEBHOOK_URL")
        if url:
            out[kind] = ChannelSpec(kind, kind, url=url)
    return out


def _setting_value(raw: object) -> object:
    """Settings rows hold JSON or plain text; accept both."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _text(settings: Mapping[str, object], key: str) -> str:
    """A setting that is a string, else "" (unset, or a number or list where text belongs)."""
    value = settings.get(key)
    return value if isinstance(value, str) else ""


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
    return None


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    if isinstance(value, dict):  # {"R1": true, "R2": false}
        return [str(k) for k, v in value.items() if _as_bool(v)]
    return []


def apply_settings(
    channels: dict[str, ChannelSpec], settings: Mapping[str, object], timeout: float
) -> tuple[dict[str, ChannelSpec], frozenset[str] | None]:
    """Overlay the API's settings on channels; returns them and the alert_on_rule filter."""
    s = normalize_settings(settings)
    out = dict(channels)
    from_settings: set[str] = set()  # channels whose address the settings gave
    smtp_host = _text(s, "smtp_host")
    if smtp_host:
        base = out.get("email")
        cfg = (
            base.email
            if base and base.email
            else EmailConfig(host=smtp_host, sender="llmscope@localhost", recipients=())
        )
        security = str(s.get("smtp_security") or cfg.security)
        if security not in ("none", "starttls", "ssl"):
            security = cfg.security
        port = s.get("smtp_port")
        recipients = _as_list(s.get("smtp_to") or s.get("email_to") or list(cfg.recipients))
        password = _text(s, "smtp_password")
        cfg = replace(
            cfg,
            host=smtp_host,
            port=int(port) if isinstance(port, int | str) and str(port).isdigit() else cfg.port,
            security=security,  # type: ignore[arg-type]
            username=str(s.get("smtp_user") or s.get("smtp_username") or cfg.username),
            password=Secret(password) if password else cfg.password,
            sender=str(s.get("smtp_from") or cfg.sender),
            recipients=tuple(recipients),
            validate_certs=_verify
            if (_verify := _as_bool(s.get("smtp_verify_cert"))) is not None
            else cfg.validate_certs,
            ca_file=str(s.get("smtp_ca_file") or cfg.ca_file),
            timeout=timeout,
        )
        out["email"] = ChannelSpec("email", "email", email=cfg)
        from_settings.add("email")
    slack_url = _text(s, "slack_webhook_url")
    if slack_url:
        base_slack = out.get("slack")
        out["slack"] = (
            replace(base_slack, url=Secret(slack_url))
            if base_slack is not None and base_slack.kind == "slack"
            else ChannelSpec("slack", "slack", url=Secret(slack_url))
        )
        from_settings.add("slack")
    bot_token = _text(s, "slack_bot_token")
    if bot_token:
        base_bot = out.get("slack")
        out["slack"] = replace(
            base_bot if base_bot is not None and base_bot.kind == "slack" else ChannelSpec("slack", "slack"),
            token=Secret(bot_token),
            slack_channel=_text(s, "slack_channel"),
        )
        from_settings.add("slack")
    am_url = _text(s, "alertmanager_url")
    if am_url:
        base_am = out.get("alertmanager")
        resend = base_am.resend_s if base_am is not None and base_am.resend_s > 0 else DEFAULT_RESEND_S
        out["alertmanager"] = ChannelSpec("alertmanager", "alertmanager", url=Secret(am_url), resend_s=resend)
        from_settings.add("alertmanager")
    for kind in CHAT_KINDS:
        chat_url = _text(s, f"{kind}_webhook_url")
        if chat_url:
            out[kind] = ChannelSpec(kind, kind, url=Secret(chat_url))
            from_settings.add(kind)
    hook_url = _text(s, "webhook_url")
    if hook_url:
        hook_secret = _text(s, "webhook_secret")
        secret = Secret(hook_secret) if hook_secret else None
        base_hook = out.get("webhook")
        out["webhook"] = ChannelSpec(
            "webhook",
            "webhook",
            url=Secret(hook_url),
            secret=secret or (base_hook.secret if base_hook else Secret("")),
        )
        from_settings.add("webhook")
    pd_key = _text(s, "pagerduty_routing_key")
    if pd_key:
        base_pd = out.get("pagerduty")
        out["pagerduty"] = ChannelSpec(
            "pagerduty",
            "pagerduty",
            secret=Secret(pd_key),
            events_url=base_pd.events_url if base_pd else DEFAULT_EVENTS_URL,
        )
        from_settings.add("pagerduty")
    for kind in KINDS:
        switch = _as_bool(s.get(f"{kind}_enabled"))
        for name, spec in list(out.items()):
            if spec.kind != kind:
                continue
            if switch is not None:
                out[name] = replace(spec, enabled=switch)
            elif name in from_settings:
                out[name] = replace(spec, enabled=False)  # no switch row: the API's default, off
    rules = _as_list(s.get("alert_on_rule"))
    allowed = frozenset(r.upper() for r in rules) if rules else None  # empty: every rule
    return out, allowed


# The API's setting keys (llmscope.api.known_settings) and the seeds' flat keys mean the same.
API_KEYS = {
    "alert.on_rules": "alert_on_rule",
    "alert.email.enabled": "email_enabled",
    "alert.email.recipients": "smtp_to",
    "alert.email.smtp_host": "smtp_host",
    "alert.email.smtp_port": "smtp_port",
    "alert.email.smtp_user": "smtp_user",
    "alert.email.smtp_password": "smtp_password",
    "alert.email.from_addr": "smtp_from",
    "alert.email.tls": "smtp_security",
    "alert.email.verify_cert": "smtp_verify_cert",
    "alert.email.ca_file": "smtp_ca_file",
    "alert.slack.enabled": "slack_enabled",
    "alert.slack.webhook_url": "slack_webhook_url",
    "alert.slack.bot_token": "slack_bot_token",
    "alert.slack.channel": "slack_channel",
    "alert.webhook.enabled": "webhook_enabled",
    "alert.webhook.url": "webhook_url",
    "alert.webhook.signing_secret": "webhook_secret",
    "alert.pagerduty.enabled": "pagerduty_enabled",
    "alert.pagerduty.routing_key": "pagerduty_routing_key",
    "alert.alertmanager.enabled": "alertmanager_enabled",
    "alert.alertmanager.url": "alertmanager_url",
    "alert.teams.enabled": "teams_enabled",
    "alert.teams.webhook_url": "teams_webhook_url",
    "alert.discord.enabled": "discord_enabled",
    "alert.discord.webhook_url": "discord_webhook_url",
    "alert.mattermost.enabled": "mattermost_enabled",
    "alert.mattermost.webhook_url": "mattermost_webhook_url",
    "alert.min_severity": "min_severity",
    "alert.group_wait_s": "group_wait_s",
    "alert.group_interval_s": "group_interval_s",
    "alert.repeat_interval_s": "repeat_interval_s",
    "dashboard.base_url": "public_url",
}


def normalize_settings(settings: Mapping[str, object]) -> dict[str, object]:
    """Settings rows (JSON or text) under the flat names, the API's dotted keys translated."""
    out: dict[str, object] = {}
    for key, raw in settings.items():
        out[API_KEYS.get(key, key)] = _setting_value(raw)
    return out


def _seconds(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def build_runtime(
    file: AlerterFile | None,
    env: Env,
    settings: Mapping[str, object],
    *,
    timings: Timings,
    severities: tuple[Severity, ...] = ("critical",),
    timeout: float = 10.0,
) -> RuntimeConfig:
    """Resolve file + environment + settings into routes, channels and silences."""
    file = file or AlerterFile()
    channels = channels_from_env(env, timeout)
    for c in file.channels:
        if c.name in channels and c.name not in KINDS:
            raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG: channel {c.name!r} defined twice")
        channels[c.name] = _channel_from_file(c, env, timeout)
    channels, allowed = apply_settings(channels, settings, timeout)
    guard = Destinations.from_env(env)
    channels = {name: replace(spec, destinations=guard) for name, spec in channels.items()}
    flat = normalize_settings(settings)
    min_sev = _text(flat, "min_severity")
    if min_sev in SEVERITIES:
        severities = SEVERITIES[: SEVERITIES.index(min_sev) + 1]
    wait = _seconds(flat.get("group_wait_s"))
    timings = Timings(
        group_wait=timings.group_wait if wait is None else wait,
        group_interval=_seconds(flat.get("group_interval_s")) or timings.group_interval,
        repeat_interval=_seconds(flat.get("repeat_interval_s")) or timings.repeat_interval,
        group_by=timings.group_by,
    )
    public_url = _text(flat, "public_url")
    d = file.defaults or DefaultsFile()
    base = Timings(
        group_wait=parse_duration(d.group_wait, "defaults.group_wait")
        if d.group_wait is not None
        else timings.group_wait,
        group_interval=parse_duration(d.group_interval, "defaults.group_interval")
        if d.group_interval is not None
        else timings.group_interval,
        repeat_interval=parse_duration(d.repeat_interval, "defaults.repeat_interval")
        if d.repeat_interval is not None
        else timings.repeat_interval,
        group_by=tuple(d.group_by) if d.group_by else timings.group_by,
    )
    routes: list[Route] = []
    for r in file.routes:
        unknown = [c for c in r.channels if c not in channels]
        if unknown:
            raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG: route {r.name!r} names unknown channels {unknown}")

        def dur(value: Duration | None, default: float, what: str, route: str = r.name) -> float:
            return default if value is None else parse_duration(value, f"routes[{route}].{what}")

        try:
            routes.append(
                Route(
                    name=r.name,
                    channels=tuple(r.channels),
                    severities=tuple(r.severities),
                    rules=tuple(r.rules),
                    models=tuple(r.models),
                    providers=tuple(r.providers),
                    hosts=tuple(r.hosts),
                    group_by=tuple(r.group_by) if r.group_by else base.group_by,
                    group_wait=dur(r.group_wait, base.group_wait, "group_wait"),
                    group_interval=dur(r.group_interval, base.group_interval, "group_interval"),
                    repeat_interval=dur(r.repeat_interval, base.repeat_interval, "repeat_interval"),
                    continue_matching=r.continue_matching,
                )
            )
        except ValueError as exc:
            raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG: {exc}") from exc
    if not routes:
        routes.append(
            Route(
                name="default",
                channels=tuple(channels),
                severities=severities,
                group_by=base.group_by,
                group_wait=base.group_wait,
                group_interval=base.group_interval,
                repeat_interval=base.repeat_interval,
            )
        )
    return RuntimeConfig(
        channels=channels,
        routes=tuple(routes),
        silences=tuple(silence_from_file(s) for s in file.silences),
        allowed_rules=allowed,
        public_url=public_url or None,
    )


def _parse_time(value: str, what: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{what}={value!r}: expected HH:MM") from None


def silence_from_file(s: SilenceFile) -> Silence:
    try:
        weekly = None
        if s.weekly is not None:
            w = s.weekly
            weekly = Weekly(
                days=parse_days(w.days),
                start=_parse_time(w.start, f"silences[{s.id}].weekly.start"),
                end=_parse_time(w.end, f"silences[{s.id}].weekly.end"),
                timezone=w.timezone,
            )
        monthly = None
        if s.monthly is not None:
            m = s.monthly
            what = f"silences[{s.id}].monthly"
            start, end = _parse_time(m.start, f"{what}.start"), _parse_time(m.end, f"{what}.end")
            # Caught below and prefixed with the file and the silence: these name the key.
            try:
                weekdays = parse_nth_weekdays(m.weekdays)
            except ValueError as exc:
                raise ValueError(f"{what}.weekdays: {exc}") from None
            try:
                monthly = Monthly(
                    days=frozenset(m.days), weekdays=weekdays, start=start, end=end, timezone=m.timezone
                )
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from None
        return Silence(
            id=s.id,
            reason=s.reason,
            author=s.author,
            kind=s.kind,
            providers=tuple(s.providers),
            models=tuple(s.models),
            rules=tuple(s.rules),
            hosts=tuple(s.hosts),
            starts_at=s.starts_at,
            ends_at=s.ends_at,
            weekly=weekly,
            monthly=monthly,
        )
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG: silence {s.id!r}: {exc}") from exc
