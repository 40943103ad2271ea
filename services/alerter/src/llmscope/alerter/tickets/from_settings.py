"""The ticket tracker as the API's settings configure it (``alert.tickets.*``), over the
environment's (tickets/settings.py).

A tracker stored in the settings wins and is configured by the settings alone: ``none`` turns
tickets off, a tracker kind takes its project, token, URL and the rest from the settings (the
waits and timeouts stay the environment's). Without a stored tracker, the environment's
configuration stands. The API refuses incomplete ticket settings when they are saved; a row
written some other way that is incomplete is a :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from llmscope.alerter.tickets.base import TRACKERS, TicketConfig
from llmscope.alerter.tickets.settings import DEFAULT_URLS
from llmscope.config.env import ConfigError, Secret
from llmscope.proto.violation import SEVERITIES

PREFIX = "alert.tickets."


def _value(raw: object) -> object:
    """Settings rows hold JSON or plain text; accept both."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def ticket_config_from(
    settings: Mapping[str, object], env_config: TicketConfig | None
) -> TicketConfig | None:
    """The effective ticket configuration: the settings' tracker if one is stored, else the env's."""
    s = {k.removeprefix(PREFIX): _value(v) for k, v in settings.items() if k.startswith(PREFIX)}
    kind = s.get("tracker")
    if kind in (None, ""):
        return env_config
    if kind == "none":
        return None
    if kind not in TRACKERS:
        raise ConfigError(f"{PREFIX}tracker={kind!r}: expected none, {', '.join(TRACKERS)}")

    def text(key: str, default: str = "") -> str:
        value = s.get(key)
        return value.strip() if isinstance(value, str) and value.strip() else default

    url = text("url", DEFAULT_URLS.get(str(kind), ""))
    if not url:
        raise ConfigError(f"{PREFIX}url: required for {kind} (the site's base URL)")
    project = text("project")
    if not project:
        raise ConfigError(f"{PREFIX}project: required when {PREFIX}tracker is {kind}")
    if kind == "github" and project.count("/") != 1:
        raise ConfigError(f"{PREFIX}project={project!r}: expected owner/repo for github")
    token = text("token")
    if not token:
        raise ConfigError(f"{PREFIX}token: required when {PREFIX}tracker is {kind}")
    labels = s.get("labels")
    severity = text("min_severity", "critical")
    base = env_config or TicketConfig(kind=kind, url=url, project=project, token=Secret(""))
    return TicketConfig(
        kind=kind,
        url=url,
        project=project,
        token=Secret(token),
        user=text("user"),
        labels=tuple(str(v) for v in labels) if isinstance(labels, list) else ("llmscope",),
        jira_issue_type=text("jira_issue_type", "Task"),
        jira_done=text("jira_done", "Done"),
        jira_api=3 if str(s.get("jira_api")) == "3" else 2,
        min_severity=severity if severity in SEVERITIES else "critical",
        wait_s=base.wait_s,
        timeout_s=base.timeout_s,
        retry_initial_s=base.retry_initial_s,
    )
