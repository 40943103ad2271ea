"""Silences and maintenance windows: they mute notifications, never the recording of violations.

A silence matches on providers, models, rules and hosts (empty = any; shell patterns), needs a
reason and an author, and is active between ``starts_at`` and ``ends_at`` (one-off), during a
recurring window (``weekly`` or ``monthly``, at most one of them), or both (a recurring window
bounded by dates).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from fnmatch import fnmatchcase
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmscope.proto.control import DAY_NAMES as DAY_NAMES
from llmscope.proto.control import NTH_NAMES as NTH_NAMES

SilenceKind = Literal["silence", "maintenance"]
# The occurrence of a weekday in its month: 1..4 (NTH_NAMES' first four), or LAST (the 4th or 5th).
LAST = -1


def _window_open(local: datetime, start: time, end: time, day_matches: Callable[[date], bool]) -> bool:
    """Whether a daily window ``start``-``end`` that opens on days ``day_matches`` holds ``local``.

    Start, end and ``local`` share one tzinfo, so they compare as wall-clock times: on a DST change
    day the window covers the local times that day has (02:00-04:00 lasts one hour when 02:00-03:00
    is skipped, three when it is repeated).
    """
    # A window starting on day d may still be open on day d+1 when it crosses midnight.
    for offset in (0, 1):
        day = (local - timedelta(days=offset)).date()
        if not day_matches(day):
            continue
        begin = datetime.combine(day, start, local.tzinfo)
        end_day = day if end > start else day + timedelta(days=1)
        if begin <= local < datetime.combine(end_day, end, local.tzinfo):
            return True
    return False


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
        return _window_open(local, self.start, self.end, lambda day: day.weekday() in self.days)


@dataclass(frozen=True, slots=True, kw_only=True)
class Monthly:
    """A window on some days of each month, local time in ``timezone``; ``end <= start`` runs past midnight.

    ``days`` are days of the month, 1..31: a day a month lacks (the 31st in April, the 30th in
    February) does not occur in that month; it is not moved to the month's last day.
    ``weekdays`` are ``(nth, weekday)`` pairs: nth 1..4 or :data:`LAST`, weekday 0 (Monday) to 6,
    so ``(1, 6)`` is the first Sunday. A window opens on every day matching either set; one
    crossing midnight on the month's last day ends in the next month.
    """

    days: frozenset[int] = frozenset()
    weekdays: frozenset[tuple[int, int]] = frozenset()
    start: time
    end: time
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not self.days and not self.weekdays:
            raise ValueError("a monthly window needs days of the month or nth weekdays")
        if not all(1 <= d <= 31 for d in self.days):
            raise ValueError("days of the month are 1..31")
        if not all((n == LAST or 1 <= n <= 4) and 0 <= w <= 6 for n, w in self.weekdays):
            raise ValueError("an nth weekday is (1..4 or LAST, 0 (Monday)..6 (Sunday))")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {self.timezone!r}") from None

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        return _window_open(local, self.start, self.end, self.opens_on)

    def opens_on(self, day: date) -> bool:
        """Whether the window opens on this local date."""
        if day.day in self.days:
            return True
        if not self.weekdays:
            return False
        nth = (day.day - 1) // 7 + 1
        last = (day + timedelta(days=7)).month != day.month
        wd = day.weekday()
        return (nth, wd) in self.weekdays or (last and (LAST, wd) in self.weekdays)


def parse_days(names: Iterable[str]) -> frozenset[int]:
    days = set()
    for name in names:
        key = name.strip().lower()[:3]
        if key not in DAY_NAMES:
            raise ValueError(f"unknown weekday {name!r}: use mon..sun")
        days.add(DAY_NAMES.index(key))
    return frozenset(days)


def parse_nth_weekdays(names: Iterable[str]) -> frozenset[tuple[int, int]]:
    """``"first sun"``, ``"last Friday"``, ... -> ``(nth, weekday)`` pairs for :class:`Monthly`."""
    pairs = set()
    for name in names:
        words = name.strip().lower().split()
        if len(words) != 2 or words[0] not in NTH_NAMES or words[1][:3] not in DAY_NAMES:
            raise ValueError(
                f"unknown nth weekday {name!r}: use {'|'.join(NTH_NAMES)} and mon..sun, e.g. 'first sun'"
            )
        nth = NTH_NAMES.index(words[0]) + 1
        pairs.add((LAST if nth == len(NTH_NAMES) else nth, DAY_NAMES.index(words[1][:3])))
    return frozenset(pairs)


def nth_weekday_names(pairs: Iterable[tuple[int, int]]) -> list[str]:
    """The canonical names of ``(nth, weekday)`` pairs (``"first sun"``), in month order."""
    ordered = sorted(pairs, key=lambda p: (len(NTH_NAMES) if p[0] == LAST else p[0], p[1]))
    return [f"{NTH_NAMES[-1] if n == LAST else NTH_NAMES[n - 1]} {DAY_NAMES[w]}" for n, w in ordered]


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
    monthly: Monthly | None = None
    created_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError(f"silence {self.id!r} needs a reason")
        if not self.author.strip():
            raise ValueError(f"silence {self.id!r} needs an author")
        if self.weekly is not None and self.monthly is not None:
            raise ValueError(f"silence {self.id!r} recurs weekly or monthly, not both")
        if self.weekly is None and self.monthly is None and self.ends_at is None:
            raise ValueError(f"silence {self.id!r} needs an end (ends_at) or a weekly or monthly window")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError(f"silence {self.id!r} ends before it starts")

    def active_at(self, now: datetime) -> bool:
        if self.starts_at is not None and now < self.starts_at:
            return False
        if self.ends_at is not None and now >= self.ends_at:
            return False
        window = self.weekly or self.monthly
        return window is None or window.contains(now)

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
