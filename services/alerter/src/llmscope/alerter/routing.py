"""Which violations go to which channels, and which group they join.

A route matches on rules, severities, models, providers and hosts (empty = any; models, providers
and hosts take shell patterns such as ``llama*``). Routes are tried in order and the first match
wins unless it sets ``continue_matching``. Out of the box one route sends only ``critical``
violations to every enabled channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from llmscope.proto.violation import Severity

# One incident (a model's episode, or a cascade of several models on one host) is one group, so
# one message thread per channel. A violation outside any incident groups by provider/model.
DEFAULT_GROUP_BY = ("incident",)


@dataclass(frozen=True, slots=True)
class Route:
    """A match, the channels it notifies and the grouping timers (seconds) of its groups."""

    name: str
    channels: tuple[str, ...]
    severities: tuple[Severity, ...] = ("critical",)
    rules: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    group_wait: float = 30.0
    group_interval: float = 300.0
    repeat_interval: float = 4 * 3600.0
    continue_matching: bool = False

    def __post_init__(self) -> None:
        if self.group_wait < 0 or self.group_interval <= 0 or self.repeat_interval <= 0:
            raise ValueError(f"route {self.name!r}: group_interval and repeat_interval must be > 0")

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.severities and labels.get("severity") not in self.severities:
            return False
        if self.rules and labels.get("rule", "").upper() not in {r.upper() for r in self.rules}:
            return False
        return (
            _any_pattern(self.models, labels.get("model", ""))
            and _any_pattern(self.providers, labels.get("provider", ""))
            and _any_pattern(self.hosts, labels.get("host", ""))
        )


def _any_pattern(patterns: Sequence[str], value: str) -> bool:
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def route_alert(
    routes: Sequence[Route], labels: Mapping[str, str], *, allowed_rules: frozenset[str] | None = None
) -> list[Route]:
    """The routes a violation with these labels takes (``allowed_rules``: the API's alert_on_rule)."""
    if allowed_rules is not None and labels.get("rule", "").upper() not in allowed_rules:
        return []
    matched: list[Route] = []
    for route in routes:
        if route.matches(labels):
            matched.append(route)
            if not route.continue_matching:
                break
    return matched


def group_labels(route: Route, labels: Mapping[str, str]) -> dict[str, str]:
    out = {key: labels.get(key, "") for key in route.group_by}
    if "incident" in out and not out["incident"]:
        # Below the incident severity: grouped per model, never all together under "".
        out["incident"] = f"{labels.get('provider', '')}/{labels.get('model', '')}"
    return out


def group_key(route: Route, labels: Mapping[str, str]) -> str:
    """A stable key for the group a violation joins on a route: ``provider=openai,model=gpt-4o``."""
    return ",".join(f"{k}={v}" for k, v in group_labels(route, labels).items())
