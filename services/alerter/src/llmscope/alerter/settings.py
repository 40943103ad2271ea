"""Alerter settings, read once from the environment at start.

| variable | default | meaning |
| --- | --- | --- |
| DATABASE_URL | (required) | Postgres DSN; the alerter's `alerter_*` tables only (may be its own database) |
| LLMSCOPE_DB_STATEMENT_TIMEOUT_S | 30 | longest a query may run (as the API's); 0: no limit |
| NATS_URL | nats://127.0.0.1:4222 | NATS server(s); stream limits: see llmscope.bus.settings |
| LLMSCOPE_ALERTER_CONFIG | (none) | YAML/TOML file of channels, routes, silences (see config.py) |
| LLMSCOPE_PUBLIC_URL | http://127.0.0.1:8000 | dashboard URL for "View details" links (/violations/{id}) |
| LLMSCOPE_ALERTER_DURABLE | alerter | durable consumer name, shared by replicas (and `<name>-actions`) |
| LLMSCOPE_ALERTER_INSTANCE | <hostname>-<pid> | claim owner; unique per live replica (retaken at start) |
| LLMSCOPE_ALERTER_SEVERITIES | critical | severities the default route notifies |
| LLMSCOPE_ALERTER_GROUP_WAIT_S | 30 | wait after a group's first violation before its first message |
| LLMSCOPE_ALERTER_GROUP_INTERVAL_S | 300 | minimum time between messages of a group |
| LLMSCOPE_ALERTER_REPEAT_INTERVAL_S | 14400 | reminder interval while unacknowledged violations fire |
| LLMSCOPE_ALERTER_REPAGE_AFTER_RESOLVE_S | 3600 | still open after a hand resolution: paged again (0: off) |
| LLMSCOPE_ALERTER_TICK_S | 1 | how often due groups and expired claims are looked for |
| LLMSCOPE_ALERTER_LEASE_S | 120 | claim lease, renewed while sending; >= 1.25 x (timeout + 1.25 x max) |
| LLMSCOPE_ALERTER_RETRY_DEADLINE_S | 600 | give up retrying a delivery after this long |
| LLMSCOPE_ALERTER_RETRY_INITIAL_S | 1 | first backoff delay (doubles, +/-25% jitter) |
| LLMSCOPE_ALERTER_RETRY_MAX_S | 60 | backoff cap, +/-25% jitter; a longer Retry-After is cut to it |
| LLMSCOPE_ALERTER_SEND_TIMEOUT_S | 10 | timeout of one delivery attempt |
| LLMSCOPE_ALERTER_CONCURRENCY | 16 | deliveries in flight per replica |
| LLMSCOPE_ALERTER_SETTINGS_REFRESH_S | 10 | how often the API's settings bucket is re-read |
| LLMSCOPE_ALERTER_RETENTION_DAYS | 90 | finished records older than this are deleted hourly (0: never) |
| LLMSCOPE_ALERTER_HEALTH_HOST | 0.0.0.0 | address of /healthz, /readyz, /metrics |
| LLMSCOPE_ALERTER_HEALTH_PORT | 8003 | port of the same (0: no health server) |
| LLMSCOPE_INCIDENT_WINDOW_S | 300 | violations this close in time join one incident |
| LLMSCOPE_INCIDENT_SUSTAINED_S | 60 | one-point episode (SPIKE, R1) open this long: sustained (cascades) |
| LLMSCOPE_INCIDENT_MIN_SEVERITY | critical | least severity that forms incidents: critical, warning, info |
| LLMSCOPE_ANALYSIS_DELAY_S | 30 | settle time after an incident's last change before analysis |
| LLMSCOPE_ANALYSIS_LLM_URL | (none) | OpenAI-compatible or Ollama base URL; unset: no LLM analysis |
| LLMSCOPE_ANALYSIS_LLM_MODEL | (none) | model name (required with the URL) |
| LLMSCOPE_ANALYSIS_LLM_KIND | openai | openai or ollama |
| LLMSCOPE_ANALYSIS_LLM_API_KEY | (none) | bearer token for the LLM endpoint (secret) |
| LLMSCOPE_ANALYSIS_LLM_TIMEOUT_S | 30 | the LLM's answer is abandoned after this |
| LLMSCOPE_TICKETS_TRACKER | none | none, github, jira or gitlab: critical incidents open a ticket there |
| LLMSCOPE_TICKETS_URL | GitHub, GitLab: their public API | API base URL; Jira: the site URL (required) |
| LLMSCOPE_TICKETS_PROJECT | (none) | owner/repo (github), project key (jira), project id or path (gitlab) |
| LLMSCOPE_TICKETS_TOKEN | (none) | API token (secret); GitHub/Jira Bearer, GitLab PRIVATE-TOKEN |
| LLMSCOPE_TICKETS_USER | (none) | Jira Cloud account email: Basic auth with the token instead of Bearer |
| LLMSCOPE_TICKETS_LABELS | llmscope | comma-separated labels put on each ticket |
| LLMSCOPE_TICKETS_MIN_SEVERITY | critical | least incident severity that opens a ticket |
| LLMSCOPE_TICKETS_WAIT_S | 120 | longest wait for the incident's analysis (the ticket's body) |
| LLMSCOPE_TICKETS_TIMEOUT_S | 10 | timeout of one tracker request |
| LLMSCOPE_TICKETS_JIRA_API | 2 | Jira REST API version, 2 (wiki markup) or 3 (ADF) |
| LLMSCOPE_TICKETS_JIRA_ISSUE_TYPE | Task | issue type of new Jira tickets |
| LLMSCOPE_TICKETS_JIRA_DONE | Done | Jira transition that closes; else any into a done status |
| LLMSCOPE_SMTP_HOST | (none) | enables the `email` channel |
| LLMSCOPE_SMTP_PORT | 587 (465 with ssl) | SMTP port |
| LLMSCOPE_SMTP_SECURITY | starttls | none, starttls or ssl |
| LLMSCOPE_SMTP_USER / LLMSCOPE_SMTP_PASSWORD | (none) | SMTP login (password is a secret) |
| LLMSCOPE_SMTP_VERIFY_CERT | true | false: accept any certificate (STARTTLS/SSL), e.g. a self-signed relay |
| LLMSCOPE_SMTP_CA_FILE | (none) | PEM CA (or self-signed certificate) to trust instead of the system's |
| LLMSCOPE_SMTP_FROM | llmscope@localhost | sender address |
| LLMSCOPE_ALERT_EMAIL_TO | (none) | comma-separated recipients |
| LLMSCOPE_SLACK_WEBHOOK_URL | (none) | enables the `slack` channel (secret) |
| LLMSCOPE_SLACK_BOT_TOKEN | (none) | Slack bot token: chat.postMessage, incident threads (secret) |
| LLMSCOPE_SLACK_CHANNEL | (none) | channel id the bot posts to (required with the token) |
| LLMSCOPE_SLACK_API_URL | https://slack.com/api | Slack Web API base URL |
| LLMSCOPE_WEBHOOK_URL / LLMSCOPE_WEBHOOK_SECRET | (none) | enables the `webhook` channel; HMAC key (secret) |
| LLMSCOPE_PAGERDUTY_ROUTING_KEY | (none) | enables the `pagerduty` channel (secret) |
| LLMSCOPE_PAGERDUTY_EVENTS_URL | https://events.pagerduty.com/v2/enqueue | Events API v2 URL |
| LLMSCOPE_ALERTMANAGER_URL | (none) | enables the `alertmanager` channel: base URL (secret) |
| LLMSCOPE_ALERTMANAGER_RESEND_S | 60 | re-send firing alerts this often (< resolve_timeout) |
| LLMSCOPE_TEAMS_WEBHOOK_URL | (none) | enables the `teams` channel: Workflows URL (secret) |
| LLMSCOPE_DISCORD_WEBHOOK_URL | (none) | enables the `discord` channel (secret) |
| LLMSCOPE_MATTERMOST_WEBHOOK_URL | (none) | enables the `mattermost` channel (secret) |
| LLMSCOPE_ALERT_ALLOWED_HOSTS | (none) | non-public hosts, addresses, networks channels may reach |
| LLMSCOPE_LOG_LEVEL | INFO | log level |
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from llmscope.alerter.config import Timings
from llmscope.alerter.llm import LlmConfig
from llmscope.alerter.retry import RetryPolicy
from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.settings import ticket_config
from llmscope.bus.settings import BusSettings
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.proto.violation import SEVERITIES, Severity

LEASE_MARGIN = 1.25


def check_lease(lease_s: float, retry: RetryPolicy) -> None:
    """The lease must outlast one attempt plus the longest backoff, with a margin.

    A heartbeat renews it meanwhile; the margin is for a heartbeat that fails for a while (a
    database blip), so that the claim is not handed to another sender in the middle of a try.
    """
    needed = LEASE_MARGIN * (retry.attempt_timeout + retry.longest_sleep)
    if lease_s < needed:
        raise ConfigError(
            f"LLMSCOPE_ALERTER_LEASE_S={lease_s:g}: must be at least {needed:g} s, {LEASE_MARGIN:g} x"
            f" (LLMSCOPE_ALERTER_SEND_TIMEOUT_S={retry.attempt_timeout:g} + the longest backoff,"
            f" LLMSCOPE_ALERTER_RETRY_MAX_S={retry.max_delay:g} + {retry.jitter:.0%} jitter)"
        )


@dataclass(frozen=True, slots=True)
class AlerterSettings:
    database_url: Secret
    bus: BusSettings
    config_path: Path | None
    public_url: str
    durable: str
    instance: str
    severities: tuple[Severity, ...]
    timings: Timings
    tick_s: float
    lease_s: float
    retry: RetryPolicy
    concurrency: int
    settings_refresh_s: float
    retention_days: float
    health_host: str
    health_port: int
    incident_window_s: float
    incident_sustained_s: float
    incident_min_severity: Severity
    analysis_delay_s: float
    llm: LlmConfig | None
    log_level: str
    tickets: TicketConfig | None = None
    db_statement_timeout_s: float = 30.0
    repage_after_resolve_s: float = 3600.0

    @classmethod
    def from_env(cls, env: Env | None = None) -> AlerterSettings:
        env = env or Env()
        dsn = env.url("DATABASE_URL", None, schemes=("postgres", "postgresql"))
        if not dsn:
            raise ConfigError("DATABASE_URL: not set; the alerter keeps its notification log in Postgres")
        severities = env.items("LLMSCOPE_ALERTER_SEVERITIES", ("critical",))
        for s in severities:
            if s not in SEVERITIES:
                raise ConfigError(
                    f"LLMSCOPE_ALERTER_SEVERITIES={s!r}: expected some of {', '.join(SEVERITIES)}"
                )
        config = env.optional_text("LLMSCOPE_ALERTER_CONFIG")
        if config and not Path(config).is_file():
            raise ConfigError(f"LLMSCOPE_ALERTER_CONFIG={config}: no such file")
        timeout = env.number("LLMSCOPE_ALERTER_SEND_TIMEOUT_S", 10, min=0.1)
        retry = RetryPolicy(
            initial=env.number("LLMSCOPE_ALERTER_RETRY_INITIAL_S", 1, min=0.001),
            max_delay=env.number("LLMSCOPE_ALERTER_RETRY_MAX_S", 60, min=0.001),
            deadline=env.number("LLMSCOPE_ALERTER_RETRY_DEADLINE_S", 600, min=0),
            attempt_timeout=timeout,
        )
        lease_s = env.number("LLMSCOPE_ALERTER_LEASE_S", 120, min=0.1)
        check_lease(lease_s, retry)
        llm_url = env.url("LLMSCOPE_ANALYSIS_LLM_URL", None, schemes=("http", "https"))
        llm = None
        if llm_url:
            model = env.optional_text("LLMSCOPE_ANALYSIS_LLM_MODEL")
            if not model:
                raise ConfigError(
                    "LLMSCOPE_ANALYSIS_LLM_MODEL: required when LLMSCOPE_ANALYSIS_LLM_URL is set"
                )
            llm = LlmConfig(
                url=llm_url,
                model=model,
                kind=env.choice("LLMSCOPE_ANALYSIS_LLM_KIND", "openai", ("openai", "ollama")),  # type: ignore[arg-type]
                timeout=env.number("LLMSCOPE_ANALYSIS_LLM_TIMEOUT_S", 30, min=0.1),
                api_key=env.secret("LLMSCOPE_ANALYSIS_LLM_API_KEY"),
            )
        return cls(
            database_url=Secret(dsn),
            bus=BusSettings.from_env(env),
            config_path=Path(config) if config else None,
            public_url=env.url("LLMSCOPE_PUBLIC_URL", "http://127.0.0.1:8000", schemes=("http", "https"))
            or "http://127.0.0.1:8000",
            durable=env.text("LLMSCOPE_ALERTER_DURABLE", "alerter"),
            instance=env.text("LLMSCOPE_ALERTER_INSTANCE", f"{socket.gethostname()}-{os.getpid()}"),
            severities=severities,  # type: ignore[arg-type]
            timings=Timings(
                group_wait=env.number("LLMSCOPE_ALERTER_GROUP_WAIT_S", 30, min=0),
                group_interval=env.number("LLMSCOPE_ALERTER_GROUP_INTERVAL_S", 300, min=0.01),
                repeat_interval=env.number("LLMSCOPE_ALERTER_REPEAT_INTERVAL_S", 14400, min=0.01),
            ),
            tick_s=env.number("LLMSCOPE_ALERTER_TICK_S", 1, min=0.01),
            lease_s=lease_s,
            retry=retry,
            concurrency=env.integer("LLMSCOPE_ALERTER_CONCURRENCY", 16, min=1),
            settings_refresh_s=env.number("LLMSCOPE_ALERTER_SETTINGS_REFRESH_S", 10, min=0),
            retention_days=env.number("LLMSCOPE_ALERTER_RETENTION_DAYS", 90, min=0, max=36500),
            health_host=env.text("LLMSCOPE_ALERTER_HEALTH_HOST", "0.0.0.0"),
            health_port=env.integer("LLMSCOPE_ALERTER_HEALTH_PORT", 8003, min=0, max=65535),
            incident_window_s=env.number("LLMSCOPE_INCIDENT_WINDOW_S", 300, min=1),
            incident_sustained_s=env.number("LLMSCOPE_INCIDENT_SUSTAINED_S", 60, min=0),
            incident_min_severity=env.choice(  # type: ignore[arg-type]  # choice() narrows to SEVERITIES
                "LLMSCOPE_INCIDENT_MIN_SEVERITY", "critical", SEVERITIES
            ),
            analysis_delay_s=env.number("LLMSCOPE_ANALYSIS_DELAY_S", 30, min=0),
            llm=llm,
            log_level=env.choice("LLMSCOPE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            tickets=ticket_config(env),
            db_statement_timeout_s=env.number("LLMSCOPE_DB_STATEMENT_TIMEOUT_S", 30, min=0, max=86400),
            repage_after_resolve_s=env.number(
                "LLMSCOPE_ALERTER_REPAGE_AFTER_RESOLVE_S", 3600, min=0, max=366 * 86400
            ),
        )
