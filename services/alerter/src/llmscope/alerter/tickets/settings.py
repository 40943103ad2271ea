"""The ticket tracker's configuration from the environment (rows of the alerter's settings table).

Unset ``LLMSCOPE_TICKETS_TRACKER`` (or ``none``): no tickets. Otherwise the project and the token
are required, and Jira also needs its site URL; the token is a secret (never logged or shown).
"""

from __future__ import annotations

import aiohttp

from llmscope.alerter.tickets import github, gitlab
from llmscope.alerter.tickets.base import TRACKERS, TicketConfig, Tracker, TrackerKind
from llmscope.alerter.tickets.github import GitHubTracker
from llmscope.alerter.tickets.gitlab import GitLabTracker
from llmscope.alerter.tickets.jira import JiraTracker
from llmscope.config.env import ConfigError, Env
from llmscope.proto.violation import SEVERITIES

DEFAULT_URLS: dict[str, str] = {"github": github.DEFAULT_URL, "gitlab": gitlab.DEFAULT_URL}


def ticket_config(env: Env) -> TicketConfig | None:
    kind = env.choice("LLMSCOPE_TICKETS_TRACKER", "none", ("none", *TRACKERS))
    if kind == "none":
        return None
    url = env.url("LLMSCOPE_TICKETS_URL", DEFAULT_URLS.get(kind), schemes=("http", "https"))
    if not url:
        raise ConfigError(f"LLMSCOPE_TICKETS_URL: required for {kind} (the site's base URL)")
    project = env.optional_text("LLMSCOPE_TICKETS_PROJECT")
    if not project:
        raise ConfigError(
            "LLMSCOPE_TICKETS_PROJECT: required (owner/repo for github, a project key for jira,"
            " a project id or path for gitlab)"
        )
    if kind == "github" and project.count("/") != 1:
        raise ConfigError(f"LLMSCOPE_TICKETS_PROJECT={project!r}: expected owner/repo for github")
    token = env.secret("LLMSCOPE_TICKETS_TOKEN")
    if not token.get():
        raise ConfigError("LLMSCOPE_TICKETS_TOKEN: required when LLMSCOPE_TICKETS_TRACKER is set")
    return TicketConfig(
        kind=kind,  # type: ignore[arg-type]  # choice() narrows to TRACKERS
        url=url,
        project=project,
        token=token,
        user=env.text("LLMSCOPE_TICKETS_USER", ""),
        labels=env.items("LLMSCOPE_TICKETS_LABELS", ("llmscope",)),
        jira_issue_type=env.text("LLMSCOPE_TICKETS_JIRA_ISSUE_TYPE", "Task"),
        jira_done=env.text("LLMSCOPE_TICKETS_JIRA_DONE", "Done"),
        jira_api=int(env.choice("LLMSCOPE_TICKETS_JIRA_API", "2", ("2", "3"))),  # type: ignore[arg-type]
        min_severity=env.choice("LLMSCOPE_TICKETS_MIN_SEVERITY", "critical", SEVERITIES),
        wait_s=env.number("LLMSCOPE_TICKETS_WAIT_S", 120, min=0),
        timeout_s=env.number("LLMSCOPE_TICKETS_TIMEOUT_S", 10, min=0.1),
    )


def build_tracker(config: TicketConfig, session: aiohttp.ClientSession) -> Tracker:
    kinds: dict[TrackerKind, type[GitHubTracker | JiraTracker | GitLabTracker]] = {
        "github": GitHubTracker,
        "jira": JiraTracker,
        "gitlab": GitLabTracker,
    }
    return kinds[config.kind](config, session)
