"""Time axes tick on round times of the window, in the display zone (svg_axes.time_ticks)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from llmscope.web.svg_axes import Frame, time_axis, time_step, time_ticks


def at(text: str, tz: object = UTC) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()  # type: ignore[arg-type]


def labels(start: str, minutes: float, tz: object = UTC, max_ticks: int = 6) -> list[str]:
    t0 = at(start, tz)
    return [t.label for t in time_ticks(t0, t0 + minutes * 60, tz, max_ticks)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "minutes", "expected"),
    [
        # The walkthrough's hour from 13:07:12: quarter points said 13:07, 13:22, ...
        ("2026-12-06 13:07:12", 60, ["13:10", "13:20", "13:30", "13:40", "13:50", "14:00"]),
        ("2026-12-06 13:07:12", 15, ["13:10", "13:15", "13:20"]),
        ("2026-12-06 13:07:12", 6 * 60, ["14:00", "15:00", "16:00", "17:00", "18:00", "19:00"]),
        # A minute: seconds on the labels.
        ("2026-12-06 13:07:12", 1, ["13:07:20", "13:07:30", "13:07:40", "13:07:50", "13:08:00", "13:08:10"]),
        # Over midnight: the date on the first tick and on the first tick of the new day.
        ("2026-12-05 13:07:12", 24 * 60, ["12-05 18:00", "12-06 00:00", "06:00", "12:00"]),
        # A week: every other midnight, the date alone.
        ("2026-11-29 13:07:12", 7 * 24 * 60, ["11-30", "12-02", "12-04", "12-06"]),
    ],
)
def test_ticks_fall_on_round_times_in_utc(start: str, minutes: float, expected: list[str]) -> None:
    assert labels(start, minutes) == expected


def test_each_tick_is_a_multiple_of_its_step() -> None:
    t0 = at("2026-12-06 13:07:12")
    for minutes in (1, 5, 15, 60, 180, 360, 720, 1440, 3 * 1440):
        ticks = time_ticks(t0, t0 + minutes * 60, UTC, 6)
        step = time_step(minutes * 60, 6)
        assert 2 <= len(ticks) <= 6, minutes
        assert all(t.ts % step == 0 for t in ticks), (minutes, step)
        assert all(t0 <= t.ts <= t0 + minutes * 60 for t in ticks)


def test_step_is_the_shortest_round_one_that_fits() -> None:
    assert time_step(60, 6) == 10
    assert time_step(3600, 6) == 600
    assert time_step(3600, 4) == 900
    assert time_step(24 * 3600, 6) == 6 * 3600
    assert time_step(24 * 3600, 8) == 3 * 3600
    assert time_step(30 * 86400, 6) == 7 * 86400


def test_ticks_are_round_in_a_zone_off_utc_by_a_half_hour() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # UTC+05:30, no DST
    hour = ["18:40", "18:50", "19:00", "19:10", "19:20", "19:30"]
    assert labels("2026-12-06 18:37:12", 60, kolkata) == hour
    # On hours, the zone's hours: 19:00 IST is 13:30 UTC; its midnight starts the new date.
    t0 = at("2026-12-06 18:37:12", kolkata)
    hourly = time_ticks(t0, t0 + 6 * 3600, kolkata, 6)
    assert [t.label for t in hourly] == ["12-06 19:00", "20:00", "21:00", "22:00", "23:00", "12-07 00:00"]
    assert datetime.fromtimestamp(hourly[0].ts, UTC).strftime("%H:%M") == "13:30"
    day = [t.label for t in time_ticks(t0, t0 + 86400, kolkata, 6)]
    assert day == ["12-07 00:00", "06:00", "12:00", "18:00"]


def test_a_dst_change_keeps_wall_clock_ticks() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:00 does not exist that night.
    t0 = at("2026-03-29 00:00:00", berlin)
    got = [t.label for t in time_ticks(t0, t0 + 5 * 3600, berlin, 6)]
    assert got == ["00:00", "01:00", "03:00", "04:00", "05:00", "06:00"]
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:00 comes twice, labelled once.
    t0 = at("2026-10-25 00:00:00", berlin)
    got = [t.label for t in time_ticks(t0, t0 + 5 * 3600, berlin, 6)]
    assert got == ["00:00", "01:00", "02:00", "03:00", "04:00"]


def test_a_window_shorter_than_any_step_still_has_a_label() -> None:
    t0 = at("2026-12-06 13:07:12.25")
    assert [t.label for t in time_ticks(t0, t0, UTC)] == ["13:07:12"]


def test_the_axis_anchors_edge_labels_inside_the_plot() -> None:
    out: list[str] = []
    frame = Frame(72, 16, 792, 276, 320)
    t0 = at("2026-12-06 13:00:00")
    time_axis(out, frame, t0, t0 + 3600, UTC)
    svg = "".join(out)
    found = re.findall(r'<text x="([\d.]+)"[^>]*text-anchor="(\w+)">([^<]+)<', svg)
    assert [label for _, _, label in found] == ["13:00", "13:10", "13:20", "13:30", "13:40", "13:50", "14:00"]
    assert found[0][:2] == ("72.0", "start")
    assert found[-1][:2] == ("864.0", "end")
    assert {a for _, a, _ in found[1:-1]} == {"middle"}


def test_a_step_that_lands_once_in_the_window_gives_way_to_a_finer_one() -> None:
    """A phone's plot (about 300 px: two labels' room at the laptop's spacing) under 8.5 minutes
    of probes: the 5-minute step put "13:30" alone under the chart, no scale to read. The
    2-minute step's short labels stand apart there; a window too narrow for them keeps one."""
    t0 = at("2026-12-06 13:26:00")

    def labels(width: float, span_s: float) -> list[str]:
        out: list[str] = []
        time_axis(out, Frame(30, 16, width, 200, 240, compact=True), t0, t0 + span_s, UTC)
        return re.findall(r'class="tick"[^>]*>([^<]+)<', "".join(out))

    assert labels(300, 510) == ["13:26", "13:28", "13:30", "13:32", "13:34"]
    assert labels(60, 510) == ["13:30"]  # no room for more: the labels would overprint
    assert labels(300, 600) == ["13:30", "13:35"]  # two already: the step stays
