"""Maintenance windows as spans on a time chart: one-off windows as they are, weekly and monthly
ones expanded into each occurrence, clipped to the chart's window.

The alerter decides whether a window is active now (``llmscope.alerter.silences``); this module
only draws when windows were open, with the same reading of the recurrence fields: local wall-clock
times in the window's time zone, ``end <= start`` running past midnight, a day of the month a
month lacks not occurring, ``"last fri"`` the month's last Friday.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import date, datetime, time, timedelta
from fnmatch import fnmatchcase
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from llmscope.proto.control import DAY_NAMES, NTH_NAMES
from llmscope.web.alerting import SilenceInfo
from llmscope.web.trends import MaintenanceSpan

MAX_SPANS = 200


def _any_match(patterns: list[str], value: str) -> bool:
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def covered(silence: SilenceInfo, models: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (provider, model) pairs the window's provider and model patterns match. A window
    scoped by rule is drawn too (its label says so); one scoped by host only where a matched
    model ran on that host (:func:`maintenance_spans`' ``hosts_of``)."""
    return [(p, m) for p, m in models if _any_match(silence.providers, p) and _any_match(silence.models, m)]


def covers(silence: SilenceInfo, models: Iterable[tuple[str, str]]) -> bool:
    """Whether the window matches any of these (provider, model) pairs by provider and model."""
    return bool(covered(silence, models))


HostsOf = Callable[[list[tuple[str, str]], datetime, datetime], Awaitable[set[str]]]
"""The hosts these models' probes ran on between two instants (the API reads its telemetry)."""


def _label(s: SilenceInfo) -> str:
    scope = " ".join(
        f"{name}={'|'.join(values)}"
        for name, values in (
            ("provider", s.providers),
            ("model", s.models),
            ("host", s.hosts),
            ("rule", s.rules),
        )
        if values
    )
    return f"{s.reason} ({scope or 'everything'})"


def _clock(value: str | None) -> time | None:
    if not value:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        return None


def _day_test(s: SilenceInfo) -> tuple[time, time, Callable[[date], bool]] | None:
    """The daily window's times and a test of the local dates it opens on, or None if one-off."""
    if s.weekly_days:
        start, end = _clock(s.weekly_start), _clock(s.weekly_end)
        days = {DAY_NAMES.index(d[:3].lower()) for d in s.weekly_days if d[:3].lower() in DAY_NAMES}
        if start is None or end is None or not days:
            return None
        return start, end, lambda day: day.weekday() in days
    if s.monthly_days or s.monthly_weekdays:
        start, end = _clock(s.monthly_start), _clock(s.monthly_end)
        if start is None or end is None:
            return None
        month_days = set(s.monthly_days)
        nths: set[tuple[int, int]] = set()
        for name in s.monthly_weekdays:
            words = name.lower().split()
            if len(words) == 2 and words[0] in NTH_NAMES and words[1][:3] in DAY_NAMES:
                nths.add((NTH_NAMES.index(words[0]) + 1, DAY_NAMES.index(words[1][:3])))
        last = len(NTH_NAMES)

        def opens_on(day: date) -> bool:
            if day.day in month_days:
                return True
            nth = (day.day - 1) // 7 + 1
            is_last = (day + timedelta(days=7)).month != day.month
            return (nth, day.weekday()) in nths or (is_last and (last, day.weekday()) in nths)

        return start, end, opens_on
    return None


def _occurrences(s: SilenceInfo, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
    # Bounds of the window itself: its dates, and its expiry when someone ended it early.
    lo = max(start, s.starts_at) if s.starts_at else start
    hi = min(end, s.ends_at) if s.ends_at else end
    if s.expired_at is not None:
        hi = min(hi, s.expired_at)
    daily = _day_test(s)
    if daily is None:
        if s.weekly_days or s.monthly_days or s.monthly_weekdays:
            return  # a recurrence this module cannot read: drawn nowhere rather than everywhere
        if lo < hi:
            yield lo, hi
        return
    t_start, t_end, opens_on = daily
    try:
        zone = ZoneInfo(s.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return
    day = lo.astimezone(zone).date() - timedelta(days=1)  # a window from the day before may run on
    last_day = hi.astimezone(zone).date()
    while day <= last_day:
        if opens_on(day):
            begin = datetime.combine(day, t_start, zone)
            finish = datetime.combine(day if t_end > t_start else day + timedelta(days=1), t_end, zone)
            a, b = max(begin, lo), min(finish, hi)
            if a < b:
                yield a, b
        day += timedelta(days=1)


async def maintenance_spans(
    silences: Iterable[SilenceInfo],
    models: Iterable[tuple[str, str]],
    start: datetime,
    end: datetime,
    hosts_of: HostsOf | None = None,
) -> list[MaintenanceSpan]:
    """The occurrences of maintenance windows covering any of ``models`` within start..end.

    A host-scoped window's occurrence is drawn only when a model it matches ran on one of its
    hosts during that occurrence (asked of ``hosts_of``; without it, never: a window on
    ``gpu-2`` must not mark a model served from ``gpu-1``).
    """
    picked = list(models)
    spans: list[MaintenanceSpan] = []
    for s in silences:
        matched = covered(s, picked) if s.kind == "maintenance" else []
        if not matched:
            continue
        label = _label(s)
        for a, b in _occurrences(s, start, end):
            if s.hosts:
                hosts = await hosts_of(matched, a, b) if hosts_of is not None else set()
                if not any(_any_match(s.hosts, h) for h in hosts):
                    continue
            spans.append(MaintenanceSpan(a, b, label))
            if len(spans) >= MAX_SPANS:
                return sorted(spans, key=lambda m: m.start)
    return sorted(spans, key=lambda m: m.start)
