"""The one way the dashboard's SVG charts draw their axes: value ticks with grid lines, time ticks
along the bottom, the rotated unit label, and the number formats they share.

The control chart (``svg.py``), the traffic chart, the comparison and availability charts and the
violation's mini-chart each place their own plot area and draw their own data; the frame around it
reads the same everywhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from html import escape


def fmt(v: float) -> str:
    """A value for a label: thousands grouped, fewer decimals the larger it is."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (steps of 1, 2, 2.5 or 5 times a power of ten) in lo..hi."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = []
    t = math.ceil(lo / step) * step
    while t <= hi + 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """One format for a whole axis: "750" beside "1,000", not "750.0"."""
    if all(float(t).is_integer() for t in ticks):
        return f"{value:,.0f}"
    return fmt(value)


# A chart drawn narrower than this (a phone's, ``pages.chart_width``) keeps its plot wide: short
# value labels ("1.5k") in a narrow left margin, the unit above the plot instead of down its side,
# and the line labels (UCL, CL) inside the plot. With a laptop's margins (72 and 96 px) a phone's
# 380-wide chart kept 56 % of its width for the plot, about 190 px on screen.
NARROW_BELOW = 720
NARROW_PAD_L, NARROW_PAD_R = 36, 8


def is_narrow(width: float) -> bool:
    """Whether a chart ``width`` wide is drawn in the compact layout."""
    return width < NARROW_BELOW


def side_pads(width: float, left: int, right: int) -> tuple[int, int]:
    """The plot's left and right margins in a chart ``width`` wide: ``left`` and ``right``, or the
    compact layout's where the chart is narrow."""
    return (NARROW_PAD_L, NARROW_PAD_R) if is_narrow(width) else (left, right)


def short_label(value: float, ticks: Sequence[float]) -> str:
    """A compact axis's label: thousands as "k" ("1.5k", "12k"), smaller values as usual."""
    if all(abs(t) < 1000 for t in ticks):
        return tick_label(value, ticks)
    return f"{value / 1000:g}k" if value else "0"


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a chart's plot area sits in its ``viewBox`` (``compact``: the narrow layout)."""

    left: float
    top: float
    width: float
    height: float
    svg_height: float
    compact: bool = False

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height


def value_axis(
    out: list[str],
    frame: Frame,
    ticks: Sequence[float],
    y: Callable[[float], float],
    label: Callable[[float], str] | None = None,
) -> None:
    """A grid line and a label at each tick (default: :func:`tick_label`, or :func:`short_label`
    in a compact frame)."""
    text = label or (lambda v: (short_label if frame.compact else tick_label)(v, ticks))
    gap = 4 if frame.compact else 6
    for tick in ticks:
        ty = y(tick)
        out.append(
            f'<line x1="{frame.left}" x2="{frame.right}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{frame.left - gap}" y="{ty + 4:.1f}" class="tick" text-anchor="end">'
            f"{escape(text(tick))}</text>"
        )


# Steps a time axis may take, shortest first: each a round count of seconds, minutes, hours or
# days, so that ticks fall on times a reader would name (13:00, 13:15), never on a quarter of
# whatever window the chart happens to have (13:07, 13:22).
TIME_STEPS_S: tuple[int, ...] = (
    1, 2, 5, 10, 15, 30,
    60, 120, 300, 600, 900, 1800,
    3600, 7200, 10800, 21600, 43200,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
)  # fmt: skip
DAY_S = 86400
# About this many pixels per time label: "12-05 18:00" at 11 px is ~70 px wide, and a gap.
TICK_SPACING_PX = 110.0
# A label closer than this to the plot's edge is anchored on its side, not centred over it (the
# trend charts keep a narrow right margin that would cut a centred label).
EDGE_PX = 32.0


@dataclass(frozen=True, slots=True)
class TimeTick:
    """One label of a time axis: where (epoch seconds) and what it says."""

    ts: float
    label: str


def time_step(span_s: float, max_ticks: int) -> int:
    """The shortest round step that puts at most ``max_ticks`` ticks in a window of ``span_s``."""
    for step in TIME_STEPS_S:
        if span_s / step <= max(max_ticks, 1):
            return step
    return TIME_STEPS_S[-1]


def time_ticks(t0: float, t1: float, tz: tzinfo | None, max_ticks: int = 6) -> list[TimeTick]:
    """Ticks on round times of the window ``[t0, t1]`` (epoch seconds), in the zone ``tz``.

    The step is the shortest of :data:`TIME_STEPS_S` giving at most ``max_ticks`` ticks; ticks
    sit where the wall clock of ``tz`` (None: UTC) is a multiple of it since midnight (days: at
    midnight), so a zone half an hour off UTC still gets 13:00, not 12:30. Labels carry seconds
    under a minute's step and the date from a day's step; a window over several dates puts the
    date on the first tick and on the first tick of each new date. A wall-clock time that does
    not exist (a DST gap) is skipped; a repeated one is labelled once.
    """
    zone = tz or UTC
    if t1 <= t0:
        return [TimeTick(t0, datetime.fromtimestamp(t0, zone).strftime("%H:%M:%S"))]
    step = time_step(t1 - t0, max_ticks)
    start = datetime.fromtimestamp(t0, zone).replace(tzinfo=None)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if step < DAY_S:
        into = (start - midnight).total_seconds()
        wall = midnight + timedelta(seconds=math.ceil(into / step) * step)
        delta = timedelta(seconds=step)
    else:
        wall = midnight if start == midnight else midnight + timedelta(days=1)
        delta = timedelta(days=step // DAY_S)
    found: list[tuple[float, datetime]] = []
    while True:
        ts = wall.replace(tzinfo=zone).timestamp()
        if ts > t1:
            break
        local = datetime.fromtimestamp(ts, zone)
        # A time a DST gap skips maps elsewhere on the way back: not a tick of this axis.
        if ts >= t0 and local.replace(tzinfo=None) == wall and (not found or ts > found[-1][0]):
            found.append((ts, local))
        wall += delta
    if step >= DAY_S:
        return [TimeTick(ts, local.strftime("%m-%d")) for ts, local in found]
    clock = "%H:%M:%S" if step < 60 else "%H:%M"
    many_days = start.date() != datetime.fromtimestamp(t1, zone).date()
    ticks = []
    for i, (ts, local) in enumerate(found):
        new_date = i == 0 or local.date() != found[i - 1][1].date()
        form = f"%m-%d {clock}" if many_days and new_date else clock
        ticks.append(TimeTick(ts, local.strftime(form)))
    return ticks


def time_axis(out: list[str], frame: Frame, t0: float, t1: float, tz: tzinfo | None) -> None:
    """A label and a short mark at each round time of the window (see :func:`time_ticks`)."""
    max_ticks = max(2, int(frame.width // TICK_SPACING_PX))
    span = t1 - t0
    for tick in _readable_ticks(frame, t0, t1, tz, max_ticks):
        tx = frame.left + (tick.ts - t0) / span * frame.width if span > 0 else frame.left
        anchor = "start" if tx - frame.left < EDGE_PX else "end" if frame.right - tx < EDGE_PX else "middle"
        out.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{frame.bottom}" y2="{frame.bottom + 4}" '
            'class="tick-mark"/>'
            f'<text x="{tx:.1f}" y="{frame.svg_height - 8}" class="tick" text-anchor="{anchor}">'
            f"{tick.label}</text>"
        )


# About the width of a character of an 11-px label (DejaVu Sans's digits are 7 px; most narrower).
CHAR_PX = 6.6


def _readable_ticks(frame: Frame, t0: float, t1: float, tz: tzinfo | None, max_ticks: int) -> list[TimeTick]:
    """:func:`time_ticks` for ``max_ticks``; when its step lands once in the window (a phone's
    9 minutes at a 5-minute step: "21:30" alone, no scale to read), the shortest finer step whose
    labels still stand apart (their widths and a gap between neighbours)."""
    ticks = time_ticks(t0, t1, tz, max_ticks)
    span = t1 - t0
    if len(ticks) > 1 or span <= 0:
        return ticks
    for more in range(max_ticks + 1, 4 * max_ticks + 1):
        finer = time_ticks(t0, t1, tz, more)
        if len(finer) < 2:
            continue
        gap = min(b.ts - a.ts for a, b in itertools.pairwise(finer)) / span * frame.width
        widest = max(len(t.label) for t in finer) * CHAR_PX
        return finer if gap >= widest + 2 * CHAR_PX else ticks
    return ticks


def line_label(frame: Frame, ly: float, cls: str, text: str) -> str:
    """The label (``UCL 1,890``) of a horizontal line at ``ly``: right of the plot; in a compact
    frame inside it, at its left (the newest points are on the right), above the line (below it
    at the plot's top), on a backing of the plot's colour that keeps it legible over the data it
    is drawn after."""
    if not frame.compact:
        return f'<text x="{frame.right + 4}" y="{ly + 4:.1f}" class="{cls}-label">{escape(text)}</text>'
    ty = ly - 3 if ly - 14 >= frame.top else ly + 12
    return (
        f'<rect x="{frame.left + 1}" y="{ty - 10:.1f}" width="{len(text) * CHAR_PX + 4:.0f}" height="13" '
        f'class="label-backing"/><text x="{frame.left + 3}" y="{ty:.1f}" class="{cls}-label inside">'
        f"{escape(text)}</text>"
    )


def unit_label(out: list[str], frame: Frame, text: str) -> None:
    """The unit, rotated, along the left edge; in a compact frame, above the plot's left corner
    (the rotated label would take a margin of its own)."""
    if frame.compact:
        out.append(
            f'<text x="{frame.left}" y="{frame.top - 5:.1f}" class="axis-label" text-anchor="start">'
            f"{escape(text)}</text>"
        )
        return
    mid = frame.top + frame.height / 2
    out.append(
        f'<text x="14" y="{mid:.1f}" class="axis-label" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid:.1f})">{escape(text)}</text>'
    )
