"""Silences and maintenance windows: they mute notifications, never the recording of violations.

A silence matches on providers, models, rules and hosts (empty = any; shell patterns), needs a
reason and an author, and is active between ``starts_at`` and ``ends_at`` (one-off), during a
weekly window (``weekly``), or both (a weekly window bounded by dates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Literal
from zoneinfo import ZoneInfo

SilenceKind = Literal["silence", "maintenance"]
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class Weekly:
    """A window on some weekdays, local time in ``timezone``; ``end <= start`` runs past midnight."""

    days: frozenset[int]
    start: time
    end: time
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.days or not all(0 <= d <= 6 for d in self.days):
            raise ValueError("a weekly window needs days between 0 (Monday) and 6 (Sunday)")
        ZoneInfo(self.timezone)  # raises on an unknown zone

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        # A window starting on day d may still be open on day d+1 when it crosses midnight.
        for offset in (0, 1):
            day = (local - timedelta(days=offset)).date()
            if day.weekday() not in self.days:
                continue
            start = datetime.combine(day, self.start, local.tzinfo)
            end_day = day if self.end > self.start else day + timedelta(days=1)
            end = datetime.combine(end_day, self.end, local.tzinfo)
            if start <= local < end:
                return True
        return False


def parse_days(names: Iterable[str]) -> frozenset[int]:
    days = set()
    for name in names:
        key = name.strip().lower()[:3]
        if key not in DAY_NAMES:
            raise ValueError(f"unknown weekday {name!r}: use mon..sun")
        days.add(DAY_NAMES.index(key))
    return frozenset(days)


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes matching violations' notifications while active; reason and author are required."""

    id: str
    reason: str
    author: str
    kind: SilenceKind = "silence"
    providers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekly: Weekly | None = None
    created_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError(f"silence {self.id!r} needs a reason")
        if not self.author.strip():
            raise ValueError(f"silence {self.id!r} needs an author")
        if self.weekly is None and self.ends_at is None:
            raise ValueError(f"silence {self.id!r} needs an end (ends_at) or a weekly window")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError(f"silence {self.id!r} ends before it starts")

    def active_at(self, now: datetime) -> bool:
        if self.starts_at is not None and now < self.starts_at:
            return False
        if self.ends_at is not None and now >= self.ends_at:
            return False
        return self.weekly is None or self.weekly.contains(now)

    def matches(self, labels: Mapping[str, str]) -> bool:
        rules = {r.upper() for r in self.rules}
        return (
            _any(self.providers, labels.get("provider", ""))
            and _any(self.models, labels.get("model", ""))
            and _any(self.hosts, labels.get("host", ""))
            and (not rules or labels.get("rule", "").upper() in rules)
        )


def _any(patterns: Sequence[str], value: str) -> bool:
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def muting(silences: Iterable[Silence], labels: Mapping[str, str], now: datetime) -> Silence | None:
    """The first active silence that mutes these labels, or None."""
    for silence in silences:
        if silence.active_at(now) and silence.matches(labels):
            return silence
    return None
