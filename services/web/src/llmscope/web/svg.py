"""Server-side rendering of a control chart as inline SVG (no JavaScript chart library to vendor).

Points, the center line, UCL/LCL, zone A/B bounds, min-max bands for bucketed points and
violations marked in red. A chart without limits says it is collecting its baseline (or that
the SPC engine has no chart for it yet).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from html import escape
from urllib.parse import urlencode

from markupsafe import Markup

from llmscope.web.data import METRIC_LABELS, ChartData, ChartPoint, Sparkline, ViolationMark
from llmscope.web.rules_legend import RULES
from llmscope.web.svg_axes import (
    Frame,
    fmt,
    is_narrow,
    line_label,
    nice_ticks,
    side_pads,
    time_axis,
    unit_label,
    value_axis,
)
from llmscope.web.userinfo import without_password

WIDTH = 960
HEIGHT = 320
PAD_L, PAD_R, PAD_T, PAD_B = 72, 96, 16, 28
# Right-hand line labels closer than this (px) would overprint each other.
LABEL_GAP = 12.0
MIN_SPAN_S = 60.0
# Violation marks the dashboard draws at most on one chart (the most severe, then the newest,
# of its window). A mark is 10 px across on a 792-px plot: 250 of them already overprint each
# other, and each is ~160 bytes of the answer (issue 13: a 24 h chart under 100 KB).
MARKS_DRAWN = 250
SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}
INFO_HALF_DIAGONAL = 4.5
"""An info mark's diamond, centre to corner (px): smaller than the 5-px discs and rings."""
COUNT_HEIGHT = 9.0
"""A mark's count's height above its baseline (11 px type, digits only)."""
# Raw probes get a circle (and tooltip) each, up to 400; buckets only while they are this far
# apart on average (px): denser, the line and the min-max band show them, and only buckets beyond
# the limits and the latest get a circle (a 24 h chart has 360 buckets on 792 px).
POINT_SPACING_PX = 4.0
# The line breaks where points are this many of their usual (median) spacings apart: an outage or
# a stopped prober is a gap on the chart, not a straight line drawn through it.
GAP_SPACINGS = 5.0


def runs(points: list[ChartPoint]) -> list[list[ChartPoint]]:
    """``points`` cut wherever the gap to the next is over ``GAP_SPACINGS`` median spacings."""
    if len(points) < 3:
        return [points] if points else []
    gaps = sorted(b.ts.timestamp() - a.ts.timestamp() for a, b in itertools.pairwise(points))
    limit = GAP_SPACINGS * gaps[len(gaps) // 2]
    out = [[points[0]]]
    for a, b in itertools.pairwise(points):
        if limit > 0 and b.ts.timestamp() - a.ts.timestamp() > limit:
            out.append([])
        out[-1].append(b)
    return out


def per_probe(marks: list[ViolationMark]) -> list[list[ViolationMark]]:
    """The violations grouped by the probe they fired at (its time and value), in time order, the
    most severe first within a probe."""
    groups: dict[tuple[datetime, float], list[ViolationMark]] = {}
    for v in sorted(marks, key=lambda v: (v.ts, SEVERITY_RANK.get(v.severity, len(SEVERITY_RANK)), v.rule)):
        groups.setdefault((v.ts, v.value), []).append(v)
    return list(groups.values())


def mark_shape(severity: str, cx: float, cy: float, title: str = "") -> str:
    """A violation's mark in its severity's style (``style.css``, and the key under the chart:
    :func:`mark_key`): critical a filled disc, warning a thick amber ring, info a thin blue diamond
    (smaller). The shapes tell them apart in grey or to a colour-blind eye; the colours are the
    severity badges'. ``title``: its tooltip element, if any."""
    cls = f"violation {escape(severity)}"
    if severity == "info":
        r = INFO_HALF_DIAGONAL
        points = f"{cx:.1f},{cy - r:.1f} {cx + r:.1f},{cy:.1f} {cx:.1f},{cy + r:.1f} {cx - r:.1f},{cy:.1f}"
        return f'<polygon points="{points}" class="{cls}">{title}</polygon>'
    return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" class="{cls}">{title}</circle>'


def mark_key(least: str = "info") -> Markup:
    """The key to the charts' violation marks: one per severity the chart shows (``least`` and
    those above it: the dashboard's severity filter) and a probe where several rules fired, each
    drawn by :func:`mark_shape` as on the chart."""
    shown = [
        sev for sev, rank in SEVERITY_RANK.items() if rank <= SEVERITY_RANK.get(least, len(SEVERITY_RANK))
    ]

    def icon(body: str, width: int = 16) -> str:
        return (
            f'<svg class="mark-icon" viewBox="0 0 {width} 16" width="{width}" height="16" '
            f'aria-hidden="true">{body}</svg>'
        )

    items = [
        f'<span class="mark-key-item" data-severity="{sev}">{icon(mark_shape(sev, 8, 8))} {sev}</span>'
        for sev in shown
    ]
    several = (
        f"{mark_shape(shown[min(1, len(shown) - 1)], 10, 9)}"
        '<circle cx="10" cy="9" r="8" class="violation-more"/>'
        '<text x="20" y="9" class="violation-count" dominant-baseline="middle">3</text>'
    )
    items.append(
        f'<span class="mark-key-item several">{icon(several, 28)} several rules at one probe '
        "(the worst one's mark, with their count)</span>"
    )
    return Markup(
        '<p class="mark-key small"><span class="muted">Violation marks:</span> ' + " ".join(items) + "</p>"
    )


def violation_mark(
    group: list[ViolationMark], cx: float, cy: float, provider: str, model: str, *, top: float = 0.0
) -> str:
    """One probe's violation mark: a ring in its worst rule's style; with several rules (they
    drew identical circles over each other, all but the top one unseen) their count beside it,
    a title listing each, and a link to the violation log at that probe listing them all. The count
    sits above-right of the mark, below-right where that would cross the plot's ``top``."""
    worst = group[0]
    if len(group) == 1:
        title = f"<title>{escape(worst.rule)} {escape(worst.severity)} {fmt(worst.value)}</title>"
        return f'<a href="/violations/{escape(worst.id)}">{mark_shape(worst.severity, cx, cy, title)}</a>'
    names = {r.code: r.name for r in RULES}
    lines = [
        f"{len(group)} violations at this probe ({fmt(worst.value)}): click for them all in the log",
        *(v.rule + (f" ({names[v.rule]})" if v.rule in names else "") + f" {v.severity}" for v in group),
    ]
    span = {"since": min(v.ts for v in group).isoformat(), "until": max(v.ts for v in group).isoformat()}
    href = "/violations?" + urlencode({"series": f"{provider}|{model}", **span})
    ny = cy - 6 if cy - 6 - COUNT_HEIGHT >= top else cy + 6 + COUNT_HEIGHT
    return (
        f'<a href="{escape(href)}"><g class="violation-mark">{mark_shape(worst.severity, cx, cy)}'
        f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" class="violation-more"/><text x="{cx + 9:.1f}" '
        f'y="{ny:.1f}" class="violation-count">{len(group)}</text>'
        f"<title>{escape(chr(10).join(lines))}</title></g></a>"
    )


def time_range(data: ChartData) -> tuple[float, float]:
    """The chart's x range (epoch seconds): the window, from its first point shown.

    A window that starts before the first probe (a fresh install, a new model) would squeeze the
    data into its right edge. The availability chart under it takes the same range, so that the
    two time axes line up.
    """
    t0 = data.start.timestamp()
    t1 = max(data.end.timestamp(), t0 + 1)
    shown = [p.ts.timestamp() for p in data.points] + [v.ts.timestamp() for v in data.violations]
    first = min((t for t in shown if t0 <= t <= t1), default=t0)
    return max(t0, min(first, t1 - MIN_SPAN_S)), t1


def render_chart(data: ChartData, *, width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """The chart as an ``<svg>`` element, sized by viewBox so it scales with its container.

    Narrower than ``svg_axes.NARROW_BELOW`` (a phone's), the margins are compact and the line
    labels sit inside the plot, at its left (the newest points are on the right)."""
    compact = is_narrow(width)
    pad_l, pad_r = side_pads(width, PAD_L, PAD_R)
    plot_w = width - pad_l - pad_r
    plot_h = height - PAD_T - PAD_B
    t0, t1 = time_range(data)

    values: list[float] = []
    for p in data.points:
        values.append(p.value)
        if p.lo is not None:
            values.append(p.lo)
        if p.hi is not None:
            values.append(p.hi)
    lim = data.limits
    if lim is not None:
        values += [lim.ucl, lim.lcl, lim.center]
    values += [v.value for v in data.violations]
    if values:
        lo, hi = min(values), max(values)
    else:
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    margin = (hi - lo) * 0.06
    lo, hi = lo - margin, hi + margin
    if min(values or [0.0]) >= 0:
        lo = max(lo, 0.0)

    def x(ts: datetime) -> float:
        return pad_l + (ts.timestamp() - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * plot_h

    q = data.query
    label = f"{q.provider}/{q.model} · prompt {q.prompt_id} · {q.metric}"
    if q.target:
        label += f" · target {without_password(q.target)}"
    out: list[str] = [
        f'<svg class="control-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad_l}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    frame = Frame(pad_l, PAD_T, plot_w, plot_h, height, compact)
    value_axis(out, frame, nice_ticks(lo, hi), y)
    time_axis(out, frame, t0, t1, data.start.tzinfo)
    unit = METRIC_LABELS.get(q.metric, q.metric)
    if lim is not None and lim.transform == "log":
        unit += ", log-scale limits"
    unit_label(out, frame, unit)
    # Behind the data: each re-baseline in the window, where its new baseline started.
    for mark in data.rebaselines:
        if not (t0 <= mark.ts.timestamp() <= t1):
            continue
        mx = x(mark.ts)
        out.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{PAD_T}" y2="{PAD_T + plot_h}" stroke="#555" '
            'class="rebaseline-line">'
            f"<title>re-baseline #{mark.number} at {mark.ts.strftime('%m-%d %H:%M:%S')} by "
            f"{escape(mark.created_by)}: {escape(mark.reason)}</title></line>"
            f'<text x="{mx + 3:.1f}" y="{PAD_T + 11}" class="rebaseline-label">#{mark.number}</text>'
        )

    on_top: list[str] = []  # the compact layout's line labels, drawn over the data
    if lim is not None:
        # Most important first: where a large excursion squeezes the zones together, the
        # limits and the center keep their labels and the sigma lines lose theirs.
        lines = [
            (lim.ucl, "limit", "UCL"),
            (lim.lcl, "limit", "LCL"),
            (lim.center, "center", "CL"),
            (lim.zone_a_upper, "zone", "+2σ"),
            (lim.zone_a_lower, "zone", "−2σ"),
            (lim.zone_b_upper, "zone", "+1σ"),
            (lim.zone_b_lower, "zone", "−1σ"),
        ]
        labelled: list[float] = []
        for value, cls, name in lines:
            if not (lo <= value <= hi):
                continue
            ly = y(value)
            x2 = pad_l + plot_w
            out.append(f'<line x1="{pad_l}" x2="{x2}" y1="{ly:.1f}" y2="{ly:.1f}" class="{cls}"/>')
            # Inside a phone's plot the sigma lines go unlabelled: seven labels hid its oldest points.
            if compact and cls == "zone":
                continue
            if all(abs(ly - other) >= LABEL_GAP for other in labelled):
                labelled.append(ly)
                (on_top if compact else out).append(line_label(frame, ly, cls, f"{name} {fmt(value)}"))

    pts = [p for p in data.points if t0 <= p.ts.timestamp() <= t1]
    if data.bucket_s and pts:
        upper = " ".join(f"{x(p.ts):.1f},{y(p.hi if p.hi is not None else p.value):.1f}" for p in pts)
        lower = " ".join(
            f"{x(p.ts):.1f},{y(p.lo if p.lo is not None else p.value):.1f}" for p in reversed(pts)
        )
        out.append(f'<polygon points="{upper} {lower}" class="band"/>')
    for run in runs(pts):
        line = " ".join(f"{x(p.ts):.1f},{y(p.value):.1f}" for p in run)
        out.append(f'<polyline points="{line}" class="series"/>')
    if pts:
        every = len(pts) <= (plot_w / POINT_SPACING_PX if data.bucket_s else 400)
        last = pts[-1]
        for p in pts:
            out_of_limits = lim is not None and not (lim.lcl <= p.value <= lim.ucl)
            # (Over 400 points, a raw hour, only the line: a shifted hour is hundreds beyond.)
            if every or ((out_of_limits or p is last) and len(pts) <= 400):
                cls = "point out" if out_of_limits else "point"
                out.append(
                    f'<circle cx="{x(p.ts):.1f}" cy="{y(p.value):.1f}" r="2.5" class="{cls}">'
                    f"<title>{p.ts.strftime('%H:%M:%S')} {fmt(p.value)}</title></circle>"
                )
    shown = [v for v in data.violations if t0 <= v.ts.timestamp() <= t1]
    out += [
        violation_mark(group, x(group[0].ts), y(group[0].value), q.provider, q.model, top=PAD_T)
        for group in per_probe(shown)
    ]
    out += on_top
    if lim is None:
        if data.phase == "collecting":
            note = f"collecting baseline {data.progress}/{data.baseline_n}"
        else:
            note = "waiting for the SPC engine's chart"
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{PAD_T + 24}" class="baseline-note" '
            f'text-anchor="middle">{escape(note)}</text>'
        )
    if not pts:
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{PAD_T + plot_h / 2:.1f}" class="empty-note" '
            'text-anchor="middle">no successful probes in this window</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def render_sparkline(
    line: Sparkline, start: datetime, end: datetime, *, width: int = 240, height: int = 44
) -> Markup:
    """A model's latency over the window against its control limits, small enough for a row.

    The x axis is the whole window for every row (rows compare at a glance); the y axis spans the
    points and the limits, so a point above the UCL sits above the red line.
    """
    t0, t1 = start.timestamp(), max(end.timestamp(), start.timestamp() + 1)
    pad = 3.0
    values = [p.value for p in line.points]
    lim = line.limits
    if lim is not None:
        values += [lim.ucl, lim.lcl, lim.center]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1

    def x(ts: datetime) -> float:
        return pad + (ts.timestamp() - t0) / (t1 - t0) * (width - 2 * pad)

    def y(v: float) -> float:
        return pad + (hi - v) / (hi - lo) * (height - 2 * pad)

    label = f"{line.model} {METRIC_LABELS.get(line.metric, line.metric)}"
    out = [
        f'<svg class="sparkline" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    if lim is not None:
        for value, cls in ((lim.ucl, "limit"), (lim.lcl, "limit"), (lim.center, "center")):
            out.append(f'<line x1="0" x2="{width}" y1="{y(value):.1f}" y2="{y(value):.1f}" class="{cls}"/>')
    pts = [p for p in line.points if t0 <= p.ts.timestamp() <= t1]
    if pts:
        coords = " ".join(f"{x(p.ts):.1f},{y(p.value):.1f}" for p in pts)
        out.append(f'<polyline points="{coords}" class="series"/>')
        last = pts[-1]
        for p in pts:
            out_of_limits = lim is not None and not (lim.lcl <= p.value <= lim.ucl)
            if out_of_limits or p is last:
                cls = "point out" if out_of_limits else "point"
                out.append(
                    f'<circle cx="{x(p.ts):.1f}" cy="{y(p.value):.1f}" r="2" class="{cls}">'
                    f"<title>{p.ts.strftime('%H:%M')} {fmt(p.value)}</title></circle>"
                )
    else:
        out.append(
            f'<text x="{width / 2:.0f}" y="{height / 2 + 4:.0f}" class="empty-note" '
            'text-anchor="middle">no probes</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))
