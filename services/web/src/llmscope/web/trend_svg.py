"""Server-side SVG of the comparison chart (several models on one time axis) and of the
availability chart (success rate per target, outages as shaded bands), styled like the control
chart (``svg.py``) and needing no JavaScript.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from html import escape
from urllib.parse import urlencode

from markupsafe import Markup

from llmscope.web.data import METRIC_LABELS, ChartPoint
from llmscope.web.svg_axes import Frame, is_narrow, nice_ticks, side_pads, time_axis, unit_label, value_axis
from llmscope.web.trends import AvailabilityBucket, AvailabilityHistory, ChartEvent, Comparison
from llmscope.web.userinfo import without_password

# Tableau 10: distinct to most eyes, and the control chart's blue first.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#d62728",
)
PAD_L, PAD_R, PAD_T, PAD_B = 72, 24, 18, 28


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _band_runs(points: list[ChartPoint], gap: timedelta) -> list[list[ChartPoint]]:
    """Runs of consecutive buckets that know their p95 (2 at least: a band needs a width)."""
    runs: list[list[ChartPoint]] = []
    prev: datetime | None = None
    for p in points:
        if p.p95 is None:
            prev = None
            continue
        if prev is None or p.ts - prev > gap:
            runs.append([])
        runs[-1].append(p)
        prev = p.ts
    return [r for r in runs if len(r) > 1]


_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
_TITLE_LINES = 12
"""Violations a shared mark's title lists by name; the rest are counted."""
MARK_GAP = 12.0
"""Violation marks (8 px wide, their count above) closer than this in px are drawn as one."""


def _mark_groups(events: list[ChartEvent], x: Callable[[datetime], float]) -> list[list[ChartEvent]]:
    """The violations in time order, those within ``MARK_GAP`` px of a group's first together:
    each group is drawn at its first, so two marks are at least ``MARK_GAP`` apart."""
    groups: list[list[ChartEvent]] = []
    start = -math.inf
    for ev in sorted(events, key=lambda ev: ev.ts):
        ex = x(ev.ts)
        if groups and ex - start < MARK_GAP:
            groups[-1].append(ev)
        else:
            groups.append([ev])
            start = ex
    return groups


def group_href(group: list[ChartEvent]) -> str:
    """Where a violation mark links: a lone violation's page; for a shared mark, the violation
    log over its violations' span (first to last, both included), of its model and severity
    where they share one, which lists every one of them (its worst alone hid the others)."""
    if len(group) == 1:
        return f"/violations/{group[0].id}"
    params = {
        "since": min(ev.ts for ev in group).isoformat(),
        "until": max(ev.ts for ev in group).isoformat(),
    }
    if len(models := {(ev.provider, ev.model) for ev in group}) == 1:
        params["series"] = "|".join(next(iter(models)))
    if len(severities := {ev.severity for ev in group}) == 1:
        params["severity"] = next(iter(severities))
    return f"/violations?{urlencode(params)}"


def render_comparison(data: Comparison, *, width: int = 960, height: int = 340) -> Markup:
    """One line per model (its typical value per bucket), violations as marks along the top,
    re-baselines as dashed verticals and maintenance windows as grey bands behind the lines.

    Narrower than ``svg_axes.NARROW_BELOW`` (a phone's), the margins are compact like the
    control chart's: short value labels, and the unit above the violation marks' row."""
    compact = is_narrow(width)
    pad_l, pad_r = side_pads(width, PAD_L, PAD_R)
    plot_w, plot_h = width - pad_l - pad_r, height - PAD_T - PAD_B - 10
    top = PAD_T + 10  # room for the event marks
    t0, t1 = data.start.timestamp(), max(data.end.timestamp(), data.start.timestamp() + 1)
    firsts = [line.points[0].ts.timestamp() for line in data.lines if line.points]
    # A window longer than the history: the axis starts at the first point (as the main chart).
    t0 = max(t0, min(min(firsts, default=t0) - data.bucket_s / 2, t1 - 60))
    values = [v for line in data.lines for p in line.points for v in (p.value, p.p95) if v is not None]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    margin = (hi - lo) * 0.08
    lo, hi = max(0.0, lo - margin), hi + margin

    def x(ts: datetime) -> float:
        # A bucket still filling has its middle after now: it is drawn at now, the plot's edge.
        return pad_l + (min(ts.timestamp(), t1) - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return top + (hi - v) / (hi - lo) * plot_h

    label = f"{METRIC_LABELS.get(data.metric, data.metric)} of {len(data.lines)} models"
    out = [
        f'<svg class="comparison-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad_l}" y="{top}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    for span in data.maintenance:
        a, b = max(span.start.timestamp(), t0), min(span.end.timestamp(), t1)
        if a >= b:
            continue
        xa = pad_l + (a - t0) / (t1 - t0) * plot_w
        xw = max((b - a) / (t1 - t0) * plot_w, 2.0)
        when = f"{span.start.strftime('%m-%d %H:%M')}–{span.end.strftime('%m-%d %H:%M')}"
        out.append(
            f'<rect x="{xa:.1f}" y="{top}" width="{xw:.1f}" height="{plot_h}" class="maintenance-band">'
            f"<title>maintenance {escape(when)}: {escape(span.label)}</title></rect>"
        )
    frame = Frame(pad_l, top, plot_w, plot_h, height, compact)
    value_axis(out, frame, nice_ticks(lo, hi), y)
    time_axis(out, frame, t0, t1, data.start.tzinfo)
    # Compact, the unit goes above the plot: above the row of violation marks, not over it.
    unit = METRIC_LABELS.get(data.metric, data.metric)
    unit_label(out, replace(frame, top=PAD_T) if compact else frame, unit)
    gap = timedelta(seconds=data.bucket_s * 3)
    # Each model's p50-p95 band first, under every line: a band of one model never hides a line.
    for i, line in enumerate(data.lines):
        band = [p for p in line.points if p.ts.timestamp() >= t0]
        for stretch in _band_runs(band, gap):
            upper = " ".join(f"{x(p.ts):.1f},{y(p.p95 or p.value):.1f}" for p in stretch)
            lower = " ".join(f"{x(p.ts):.1f},{y(p.value):.1f}" for p in reversed(stretch))
            out.append(
                f'<polygon points="{upper} {lower}" class="p95-band" fill="{color(i)}">'
                f"<title>{escape(line.label)}: median to p95</title></polygon>"
            )
    for i, line in enumerate(data.lines):
        pts = [p for p in line.points if p.ts.timestamp() >= t0]
        # A gap of several buckets (nothing probed) breaks the line rather than bridging it.
        runs: list[list[str]] = []
        prev: datetime | None = None
        for p in pts:
            if prev is None or p.ts - prev > gap:
                runs.append([])
            runs[-1].append(f"{x(p.ts):.1f},{y(p.value):.1f}")
            prev = p.ts
        name = escape(line.label)
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                out.append(
                    f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color(i)}"><title>{name}</title></circle>'
                )
            else:
                out.append(
                    f'<polyline points="{" ".join(run)}" class="compare-line" stroke="{color(i)}">'
                    f"<title>{name}</title></polyline>"
                )
    index = {(line.provider, line.model): i for i, line in enumerate(data.lines)}
    shown = [ev for ev in data.events if t0 <= ev.ts.timestamp() <= t1]
    for ev in shown:
        if ev.kind != "rebaseline":
            continue
        ex = x(ev.ts)
        stroke = color(index.get((ev.provider, ev.model), 0))
        title = f"{escape(ev.ts.strftime('%m-%d %H:%M'))} {escape(ev.model)} {escape(ev.label)}"
        out.append(
            f'<g class="rebaseline"><line x1="{ex:.1f}" x2="{ex:.1f}" y1="{top}" y2="{top + plot_h}" '
            f'stroke="{stroke}" class="rebaseline-line"/><rect x="{ex - 4:.1f}" y="{top}" width="8" '
            f'height="8" fill="{stroke}"/><title>{title}</title></g>'
        )
    # Violations firing within seconds of each other (several rules on one probe, several models
    # at once) share one mark with their count: eight-pixel marks drawn over each other were a
    # blob nobody could read or click. The mark's title lists them.
    for group in _mark_groups([ev for ev in shown if ev.kind != "rebaseline"], x):
        ex = x(group[0].ts)  # at the first: groups' firsts are MARK_GAP apart, so marks never overlap
        worst = min(group, key=lambda ev: _SEVERITY_RANK.get(ev.severity, len(_SEVERITY_RANK)))
        models = {(ev.provider, ev.model) for ev in group}
        stroke = color(index.get(next(iter(models)), 0)) if len(models) == 1 else "#333"
        lines = [
            f"{ev.ts.strftime('%m-%d %H:%M:%S')} {ev.model} {ev.label} {ev.severity}"
            for ev in group[:_TITLE_LINES]
        ]
        if len(group) > _TITLE_LINES:
            lines.append(f"… and {len(group) - _TITLE_LINES} more")
        if len(group) > 1:
            lines = [f"{len(group)} violations (click for them all in the violation log)", *lines]
        title = escape("\n".join(lines))
        count = ""
        if len(group) > 1:
            # Above the mark; beside it where a phone's unit label sits above the plot's corner.
            beside = compact and ex - 8 < pad_l + 7 * len(unit)
            nx, ny, anchor = (ex + 5, PAD_T + 8, "start") if beside else (ex, PAD_T - 4, "middle")
            count = (
                f'<text x="{nx:.1f}" y="{ny}" class="event-count" text-anchor="{anchor}">{len(group)}</text>'
            )
        out.append(
            f'<a href="{escape(group_href(group))}"><g class="event-mark"><path d="M{ex - 4:.1f},{PAD_T} '
            f'L{ex + 4:.1f},{PAD_T} L{ex:.1f},{PAD_T + 8}" class="event {escape(worst.severity)}" '
            f'stroke="{stroke}"/>{count}<title>{title}</title></g></a>'
        )
    if not values:
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" class="empty-note" '
            'text-anchor="middle">no probes of these models in this window</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def _failure_runs(buckets: list[AvailabilityBucket], step: int) -> list[list[AvailabilityBucket]]:
    """Buckets with failures, adjacent ones without an outage grouped; an outage stands alone."""
    runs: list[list[AvailabilityBucket]] = []
    for b in buckets:
        if not b.failed:
            continue
        prev = runs[-1][-1] if runs else None
        joins = (
            prev is not None and not b.outage and not prev.outage and (b.ts - prev.ts).total_seconds() <= step
        )
        if joins:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def render_availability(
    data: AvailabilityHistory,
    *,
    width: int = 960,
    height: int = 170,
    x_range: tuple[float, float] | None = None,
    pad_r: int = PAD_R,
) -> Markup:
    """Success rate per target over the window; buckets where most probes failed are shaded red.

    Under a control chart, ``x_range`` and ``pad_r`` are that chart's, so the time axes line up;
    narrow, both take the compact layout's margins (``svg_axes.side_pads``).
    """
    compact = is_narrow(width)
    pad_l, pad_r = side_pads(width, PAD_L, pad_r)
    plot_w, plot_h = width - pad_l - pad_r, height - PAD_T - PAD_B
    t0, t1 = data.start.timestamp(), max(data.end.timestamp(), data.start.timestamp() + 1)
    firsts = [line.buckets[0].ts.timestamp() for line in data.lines if line.buckets]
    t0 = max(t0, min(min(firsts, default=t0), t1 - 60))
    if x_range is not None:
        t0, t1 = x_range
    step = data.bucket_s

    def x(ts: float) -> float:
        return pad_l + (min(max(ts, t0), t1) - t0) / (t1 - t0) * plot_w

    def y(share: float) -> float:
        return PAD_T + (1 - share) * plot_h

    out = [
        f'<svg class="availability-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="success rate of {escape(data.model)} per target" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad_l}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    frame = Frame(pad_l, PAD_T, plot_w, plot_h, height, compact)
    value_axis(out, frame, (0.0, 0.5, 1.0), y, lambda share: f"{share:.0%}")
    for line in data.lines:
        for run in _failure_runs(line.buckets, step):
            # Shaded by the share that failed: a full outage deep red, a blip faint. Adjacent
            # buckets with a few failures each are one band (at 24 h a bucket is 3.6 px, and
            # a steady 0.5 % of failed probes touches most of them): drawn as seen, in a few rects.
            first, last = run[0], run[-1]
            bx = x(first.ts.timestamp())
            bw = max(x(last.ts.timestamp() + step) - bx, 2.0)
            failed, probes = sum(b.failed for b in run), sum(b.probes for b in run)
            cls = "outage-band" if first.outage else "failure-band"
            opacity = 0.1 + 0.3 * failed / probes
            when = first.ts.strftime("%m-%d %H:%M")
            if len(run) > 1:
                when += (last.ts + timedelta(seconds=step)).strftime("–%H:%M")
            out.append(
                f'<rect x="{bx:.1f}" y="{PAD_T}" width="{bw:.1f}" height="{plot_h}" class="{cls}" '
                f'fill-opacity="{opacity:.2f}"><title>{escape(without_password(line.target) or "target")} '
                f"{when}: {failed} of {probes} probes failed</title></rect>"
            )
    for i, line in enumerate(data.lines):
        coords = " ".join(f"{x(b.ts.timestamp() + step / 2):.1f},{y(b.success):.1f}" for b in line.buckets)
        if len(line.buckets) > 1:
            out.append(f'<polyline points="{coords}" class="compare-line" stroke="{color(i)}"/>')
        # A point of its own where the line dips visibly (or every failed bucket, with room): the
        # band behind says how many failed.
        roomy = plot_w / max(len(line.buckets), 1) >= 4
        for b in line.buckets:
            if b.failed and (roomy or (1 - b.success) * plot_h >= 2):
                out.append(
                    f'<circle cx="{x(b.ts.timestamp() + step / 2):.1f}" cy="{y(b.success):.1f}" r="2.5" '
                    f'class="failed-point"><title>{escape(without_password(line.target) or "target")} '
                    f"{b.ts.strftime('%H:%M')}: {b.failed} of {b.probes} failed</title></circle>"
                )
    time_axis(out, frame, t0, t1, data.start.tzinfo)
    unit_label(out, frame, "probes succeeding")
    if not data.lines:
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{PAD_T + plot_h / 2:.1f}" class="empty-note" '
            'text-anchor="middle">no probes in this window</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))
