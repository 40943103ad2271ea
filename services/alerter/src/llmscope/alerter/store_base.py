"""What every part of the alerter's store shares: the pool, the clock, this replica's name, and
the JSON form of violations in ``alerter_alerts``. ``Store`` (store.py) is assembled from one
class per concern (silences, retention, tickets, reads of other services' tables) on this base."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from llmscope.alerter.model import Alert
from llmscope.config.logs import get_logger
from llmscope.proto import codec
from llmscope.proto.incident import IncidentChange, IncidentEvent
from llmscope.proto.violation import Severity, ViolationEvent

log = get_logger("llmscope.alerter.store")

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"


def encode_event(event: ViolationEvent) -> str:
    return codec.encode(event).decode()


def decode_event(raw: str | None) -> ViolationEvent | None:
    return None if raw is None else codec.decode_as(raw.encode(), ViolationEvent)


def alert_from_row(row: asyncpg.Record) -> Alert:
    event = decode_event(row["open_event"])
    assert event is not None
    return Alert(
        event=event,
        cleared=decode_event(row["cleared_event"]),
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        resolved_note=row["resolved_note"],
        repage_of_at=row.get("repage_of_at"),
        repage_of_by=row.get("repage_of_by"),
        repage_of_note=row.get("repage_of_note"),
        repaged_at=row.get("repaged_at"),
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """A notification this instance has claimed and must now send."""

    id: str
    group_id: int
    route: str
    group_key: str
    group_labels: Mapping[str, str]
    channel: str
    channel_kind: str
    reason: str
    firing: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    lead_episode_id: str
    created_at: datetime
    generation: int = 1
    """The claim's ``claim_gen``: renew, record_attempt and finish only count while it holds."""
    merged_into: str = ""
    """reason ``merged``: the incident the group's incident was folded into."""


class StoreBase:
    """The state every store part uses. ``clock`` gives aware UTC datetimes (injected for tests)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        instance: str,
        clock: Callable[[], datetime],
        lease: float = 60.0,
        incident_window: float = 300.0,
        sustain_after: float = 60.0,
        incident_min_severity: Severity = "critical",
        analysis_delay: float = 30.0,
        analysis_lease: float = 120.0,
    ) -> None:
        self.pool = pool
        self.instance = instance
        self.clock = clock
        self.lease = timedelta(seconds=lease)
        self.incident_window = incident_window
        self.sustain_after = sustain_after
        self.incident_min_severity: Severity = incident_min_severity
        self.analysis_delay = timedelta(seconds=analysis_delay)
        self.analysis_lease = timedelta(seconds=analysis_lease)
        self._log = log.bind(instance=instance)

    async def incident_event(self, conn: Conn, incident_id: str, change: IncidentChange) -> IncidentEvent:
        """The incident as an ``incident.v1`` event; the outbox part (incident_outbox_store.py) answers."""
        raise NotImplementedError
