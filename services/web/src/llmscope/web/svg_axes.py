"""The one way the dashboard's SVG charts draw their axes: value ticks with grid lines, time ticks
along the bottom, the rotated unit label, and the number formats they share.

The control chart (``svg.py``), the traffic chart, the comparison and availability charts and the
violation's mini-chart each place their own plot area and draw their own data; the frame around it
reads the same everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
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


@dataclass(frozen=True, slots=True)
class Frame:
    """Where a chart's plot area sits in its ``viewBox``."""

    left: float
    top: float
    width: float
    height: float
    svg_height: float

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
    """A grid line and a label at each tick (default: :func:`tick_label`)."""
    text = label or (lambda v: tick_label(v, ticks))
    for tick in ticks:
        ty = y(tick)
        out.append(
            f'<line x1="{frame.left}" x2="{frame.right}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{frame.left - 6}" y="{ty + 4:.1f}" class="tick" text-anchor="end">'
            f"{escape(text(tick))}</text>"
        )


def time_format(span_s: float) -> str:
    """Dates beyond a day, seconds under five minutes, hours and minutes between."""
    return "%m-%d %H:%M" if span_s > 86400 else "%H:%M:%S" if span_s < 300 else "%H:%M"


def time_axis(
    out: list[str],
    frame: Frame,
    t0: float,
    t1: float,
    tz: tzinfo | None,
    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
) -> None:
    """Times at these fractions of the plot's width, the first and last flush with its edges."""
    form = time_format(t1 - t0)
    for frac in fractions:
        ts = datetime.fromtimestamp(t0 + frac * (t1 - t0), tz=tz)
        anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
        out.append(
            f'<text x="{frame.left + frac * frame.width:.1f}" y="{frame.svg_height - 8}" class="tick" '
            f'text-anchor="{anchor}">{ts.strftime(form)}</text>'
        )


def unit_label(out: list[str], frame: Frame, text: str) -> None:
    """The unit, rotated, along the left edge."""
    mid = frame.top + frame.height / 2
    out.append(
        f'<text x="14" y="{mid:.1f}" class="axis-label" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid:.1f})">{escape(text)}</text>'
    )
