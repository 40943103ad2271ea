"""The alerter's view of a violation episode: the open event, its clear and its acknowledgement."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from llmscope.proto.violation import ViolationEvent

LABELS = (
    "provider",
    "model",
    "host",
    "target",
    "rule",
    "severity",
    "metric",
    "chart",
    "prompt_id",
    "incident",  # set at ingest (store.py): the incident id, "" outside any
)


def labels_of(event: ViolationEvent) -> dict[str, str]:
    """The labels routes, groups and silences match on."""
    return {
        "provider": event.provider,
        "model": event.model,
        "host": event.host,
        "target": event.target,
        "rule": event.rule,
        "severity": event.severity,
        "metric": event.metric,
        "chart": event.chart,
        "prompt_id": event.prompt_id,
    }


@dataclass(frozen=True, slots=True)
class Alert:
    """One violation episode: firing until its ``cleared`` event arrives."""

    event: ViolationEvent
    cleared: ViolationEvent | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    """set when a person resolved it (or its incident) before it cleared"""
    resolved_by: str | None = None
    resolved_note: str | None = None
    repage_of_at: datetime | None = None
    """set when it fires again: a person resolved it then, and the engine has not cleared it since"""
    repage_of_by: str | None = None
    repage_of_note: str | None = None
    repaged_at: datetime | None = None
    """when it was paged again (the last time): a channel told nothing since hears it as news"""

    @property
    def episode_id(self) -> str:
        return self.event.episode_id

    @property
    def firing(self) -> bool:
        """Until it clears, or a person resolves it: either ends the page, once."""
        return self.cleared is None and self.resolved_at is None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None

    @property
    def labels(self) -> dict[str, str]:
        return labels_of(self.event)
