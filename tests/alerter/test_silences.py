"""Recurring windows of silences (pure): monthly days and nth weekdays, midnight and DST."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from llmscope.alerter.silences import (
    LAST,
    Monthly,
    Silence,
    Weekly,
    muting,
    nth_weekday_names,
    parse_days,
    parse_nth_weekdays,
)

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_first_sunday_of_each_month_in_berlin() -> None:
    first_sunday = Monthly(
        weekdays=parse_nth_weekdays(["first sun"]), start=time(2), end=time(4), timezone="Europe/Berlin"
    )
    # 2026-03-01 and 2026-11-01 are first Sundays, 2026-03-08 is the second.
    assert first_sunday.contains(berlin(2026, 3, 1, 2, 0))
    assert first_sunday.contains(berlin(2026, 3, 1, 3, 59))
    assert not first_sunday.contains(berlin(2026, 3, 1, 4, 0))
    assert not first_sunday.contains(berlin(2026, 3, 1, 1, 59))
    assert not first_sunday.contains(berlin(2026, 3, 8, 2, 30))
    assert first_sunday.contains(berlin(2026, 11, 1, 2, 30))
    # The same instant seen in UTC: 01:30 UTC is 02:30 in Berlin (CET, +1).
    assert first_sunday.contains(datetime(2026, 3, 1, 1, 30, tzinfo=UTC))


def test_nth_weekdays_count_from_the_start_of_the_month() -> None:
    fourth_tue = Monthly(weekdays=frozenset({(4, 1)}), start=time(9), end=time(10))
    # June 2026 starts on a Monday: Tuesdays are the 2nd, 9th, 16th, 23rd and 30th.
    assert fourth_tue.contains(datetime(2026, 6, 23, 9, 30, tzinfo=UTC))
    assert not fourth_tue.contains(datetime(2026, 6, 30, 9, 30, tzinfo=UTC))
    assert not fourth_tue.contains(datetime(2026, 6, 16, 9, 30, tzinfo=UTC))


def test_last_weekday_is_the_fifth_or_the_fourth() -> None:
    last_tue = Monthly(weekdays=parse_nth_weekdays(["last Tuesday"]), start=time(9), end=time(10))
    # June 2026 has five Tuesdays (the last is the 30th), July 2026 four (the last is the 28th).
    assert last_tue.contains(datetime(2026, 6, 30, 9, 30, tzinfo=UTC))
    assert not last_tue.contains(datetime(2026, 6, 23, 9, 30, tzinfo=UTC))
    assert last_tue.contains(datetime(2026, 7, 28, 9, 30, tzinfo=UTC))
    assert not last_tue.contains(datetime(2026, 7, 21, 9, 30, tzinfo=UTC))


def test_a_day_the_month_lacks_does_not_occur() -> None:
    on_31 = Monthly(days=frozenset({31}), start=time(1), end=time(2))
    assert on_31.contains(datetime(2026, 5, 31, 1, 30, tzinfo=UTC))
    # April has 30 days: no window on the 30th nor on May 1st instead.
    for day in (datetime(2026, 4, 30, 1, 30, tzinfo=UTC), datetime(2026, 5, 1, 1, 30, tzinfo=UTC)):
        assert not on_31.contains(day)
    feb_30 = Monthly(days=frozenset({30}), start=time(0), end=time(23, 59))
    assert not any(
        feb_30.contains(datetime(2026, 2, 1, 12, tzinfo=UTC) + timedelta(days=d)) for d in range(28)
    )
    assert feb_30.contains(datetime(2026, 3, 30, 12, tzinfo=UTC))


def test_a_window_crossing_midnight_runs_into_the_next_month() -> None:
    # "The 15th of each month 22:00-01:00" and "the 31st 23:00-02:00": the latter ends on the 1st.
    mid = Monthly(days=frozenset({15}), start=time(22), end=time(1))
    assert mid.contains(datetime(2026, 1, 15, 22, 0, tzinfo=UTC))
    assert mid.contains(datetime(2026, 1, 16, 0, 59, tzinfo=UTC))
    assert not mid.contains(datetime(2026, 1, 16, 1, 0, tzinfo=UTC))
    assert not mid.contains(datetime(2026, 1, 15, 0, 30, tzinfo=UTC))  # the 14th's window would be
    end_of_month = Monthly(days=frozenset({31}), start=time(23), end=time(2))
    assert end_of_month.contains(datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
    assert end_of_month.contains(datetime(2026, 2, 1, 1, 30, tzinfo=UTC))
    assert end_of_month.contains(datetime(2027, 1, 1, 1, 30, tzinfo=UTC))  # over the new year
    assert not end_of_month.contains(datetime(2026, 2, 1, 2, 0, tzinfo=UTC))
    # March 1st after February's end: February has no 31st, so nothing runs into March.
    assert not end_of_month.contains(datetime(2026, 3, 1, 1, 30, tzinfo=UTC))
    last_sat = Monthly(weekdays=frozenset({(LAST, 5)}), start=time(23), end=time(3))
    # 2026-01-31 is the last Saturday of January: its window ends on Sunday February 1st.
    assert last_sat.contains(datetime(2026, 2, 1, 2, 59, tzinfo=UTC))
    assert not last_sat.contains(datetime(2026, 2, 1, 3, 0, tzinfo=UTC))


def test_dst_change_days_keep_local_wall_clock_times() -> None:
    last_sun = Monthly(weekdays=frozenset({(LAST, 6)}), start=time(2), end=time(4), timezone="Europe/Berlin")
    # 2026-03-29: clocks jump from 02:00 CET to 03:00 CEST, so 02:00-04:00 lasts one hour.
    assert not last_sun.contains(utc(2026, 3, 29, 0, 59))  # 01:59 CET
    assert last_sun.contains(utc(2026, 3, 29, 1, 0))  # 03:00 CEST
    assert last_sun.contains(utc(2026, 3, 29, 1, 59))  # 03:59 CEST
    assert not last_sun.contains(utc(2026, 3, 29, 2, 0))  # 04:00 CEST
    # 2026-10-25: clocks fall back from 03:00 CEST to 02:00 CET, so it lasts three hours.
    assert not last_sun.contains(utc(2026, 10, 24, 23, 59))  # 01:59 CEST
    assert last_sun.contains(utc(2026, 10, 25, 0, 0))  # 02:00 CEST
    assert last_sun.contains(utc(2026, 10, 25, 1, 30))  # 02:30 CET, the second time
    assert last_sun.contains(utc(2026, 10, 25, 2, 59))  # 03:59 CET
    assert not last_sun.contains(utc(2026, 10, 25, 3, 0))  # 04:00 CET
    # The day of the month is the local one: 23:30 UTC on the 14th is the 15th in Berlin.
    on_15 = Monthly(days=frozenset({15}), start=time(0), end=time(1), timezone="Europe/Berlin")
    assert on_15.contains(utc(2026, 7, 14, 22, 30))
    assert not on_15.contains(utc(2026, 7, 15, 22, 30))


def test_days_and_nth_weekdays_together() -> None:
    both = Monthly(days=frozenset({1}), weekdays=frozenset({(LAST, 4)}), start=time(6), end=time(7))
    assert both.contains(datetime(2026, 6, 1, 6, 30, tzinfo=UTC))
    assert both.contains(datetime(2026, 6, 26, 6, 30, tzinfo=UTC))  # last Friday of June 2026
    assert not both.contains(datetime(2026, 6, 19, 6, 30, tzinfo=UTC))


def test_parsing_and_naming_nth_weekdays() -> None:
    pairs = parse_nth_weekdays(["Last friday", " first SUN ", "second mon"])
    assert pairs == frozenset({(LAST, 4), (1, 6), (2, 0)})
    assert nth_weekday_names(pairs) == ["first sun", "second mon", "last fri"]
    for bad in ("fifth sun", "first", "sun first", "first someday", "first sun mon"):
        with pytest.raises(ValueError, match="nth weekday"):
            parse_nth_weekdays([bad])


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"days": frozenset({0})},
        {"days": frozenset({32})},
        {"weekdays": frozenset({(5, 0)})},
        {"weekdays": frozenset({(1, 7)})},
        {"days": frozenset({1}), "timezone": "Mars/Base"},
    ],
)
def test_invalid_monthly_windows(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Monthly(start=time(1), end=time(2), **kw)  # type: ignore[arg-type]


def test_a_monthly_silence_is_bounded_by_its_dates_and_recurs_one_way() -> None:
    window = Monthly(days=frozenset({15}), start=time(22), end=time(1))
    s = Silence(
        "backup",
        reason="monthly backup",
        author="ops",
        models=("llama*",),
        starts_at=datetime(2026, 2, 1, tzinfo=UTC),
        monthly=window,
    )
    labels = {"provider": "ollama", "model": "llama3.1:8b", "rule": "R1", "host": "h"}
    assert muting([s], labels, datetime(2026, 2, 15, 23, tzinfo=UTC)) is s
    assert muting([s], labels, datetime(2026, 1, 15, 23, tzinfo=UTC)) is None  # before starts_at
    assert muting([s], labels, datetime(2026, 2, 16, 23, tzinfo=UTC)) is None
    assert muting([s], {**labels, "model": "qwen2:7b"}, datetime(2026, 2, 15, 23, tzinfo=UTC)) is None
    with pytest.raises(ValueError, match="weekly or monthly, not both"):
        Silence(
            "x", reason="r", author="a", weekly=Weekly(parse_days(["mon"]), time(1), time(2)), monthly=window
        )
