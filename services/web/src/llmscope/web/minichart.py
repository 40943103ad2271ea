"""The violation page's mini-chart: the ±30 probes around a violation against the limits frozen
in it (not today's), drawn server-side as inline SVG like the main chart.

The x axis is the probe's order, not its time: around one event the spacing carries no meaning,
and equal steps keep the pattern readable. Failed probes have no value: a red tick on the axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from llmscope.proto.charts import AVAILABILITY
from llmscope.web.data import METRIC_LABELS, ContextPoint, Violation, ViolationMark
from llmscope.web.svg import SEVERITY_RANK, violation_mark
from llmscope.web.svg_axes import (
    Frame,
    fmt,
    is_narrow,
    line_label,
    nice_ticks,
    side_pads,
    unit_label,
    value_axis,
)

WIDTH, HEIGHT = 960, 240
PAD_L, PAD_R, PAD_T, PAD_B = 72, 96, 14, 34
LABEL_W = 90  # apart: a middle-anchored HH:MM:SS label and an end-anchored one, with a gap
LIMIT_LINES = (
    ("ucl", "limit", "UCL"),
    ("lcl", "limit", "LCL"),
    ("center", "center", "CL"),
    ("zone_a_upper", "zone", "+2σ"),
    ("zone_a_lower", "zone", "−2σ"),
)


def _metric_value(p: ContextPoint, metric: str) -> float | None:
    if p.status != "ok":
        return None
    if metric == AVAILABILITY:
        return p.latency_ms  # the successful probes' latency, for a sense of the load
    return p.value


def render_minichart(
    v: Violation, points: list[ContextPoint], *, width: int = WIDTH, marks: Sequence[ViolationMark] = ()
) -> Markup:
    """The probes around ``v`` with its frozen limits, its pattern points and the trigger ringed
    (narrow, in the control chart's compact layout: ``svg.render_chart``). ``marks``: the chart's
    violations at these probes, one mark per probe naming every rule that fired there (``v``
    alone at its trigger is the ring)."""
    compact = is_narrow(width)
    pad_l, pad_r = side_pads(width, PAD_L, PAD_R)
    plot_w, plot_h = width - pad_l - pad_r, HEIGHT - PAD_T - PAD_B
    values = [_metric_value(p, v.metric) for p in points]
    limits: dict[str, float] = {}
    if v.metric != AVAILABILITY:
        # An availability violation's limits are failure rates, not latencies: none drawn.
        limits = {
            k: float(v.limits[k]) for k, _, _ in LIMIT_LINES if isinstance(v.limits.get(k), int | float)
        }
    known = [x for x in values if x is not None]
    span = known + [limits[k] for k in ("ucl", "lcl", "center") if k in limits]
    lo, hi = (min(span), max(span)) if span else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    margin = (hi - lo) * 0.08
    lo, hi = max(lo - margin, 0.0) if lo >= 0 else lo - margin, hi + margin
    n = max(len(points), 2)

    def x(i: int) -> float:
        return pad_l + (i + 0.5) / n * plot_w

    def y(value: float) -> float:
        return PAD_T + (hi - value) / (hi - lo) * plot_h

    unit = METRIC_LABELS.get("latency_ms" if v.metric == AVAILABILITY else v.metric, v.metric)
    out = [
        f'<svg class="mini-chart" viewBox="0 0 {width} {HEIGHT}" role="img" '
        f'aria-label="{escape(unit)} around the violation" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad_l}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    frame = Frame(pad_l, PAD_T, plot_w, plot_h, HEIGHT, compact)
    value_axis(out, frame, nice_ticks(lo, hi, 4), y)
    unit_label(out, frame, unit)
    labelled: list[float] = []
    on_top: list[str] = []  # the compact layout's line labels, drawn over the data
    for key, cls, name in LIMIT_LINES:
        if key not in limits or not lo <= limits[key] <= hi:
            continue
        ly = y(limits[key])
        out.append(f'<line x1="{pad_l}" x2="{pad_l + plot_w}" y1="{ly:.1f}" y2="{ly:.1f}" class="{cls}"/>')
        if compact and cls == "zone":
            continue
        if all(abs(ly - other) >= 12 for other in labelled):
            labelled.append(ly)
            (on_top if compact else out).append(line_label(frame, ly, cls, f"{name} {fmt(limits[key])}"))
    trigger = next((i for i, p in enumerate(points) if p.trigger), None)
    if trigger is not None:
        tx = x(trigger)
        out.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{PAD_T}" y2="{PAD_T + plot_h}" class="trigger-line"/>'
        )
    # One line per run of answered probes: a line drawn across failed ones (their red ticks under
    # it) read as answers during the outage.
    runs: list[list[str]] = [[]]
    for i, val in enumerate(values):
        if val is None:
            runs.append([])
        else:
            runs[-1].append(f"{x(i):.1f},{y(val):.1f}")
    out += [f'<polyline points="{" ".join(run)}" class="series"/>' for run in runs if len(run) > 1]
    for i, (p, val) in enumerate(zip(points, values, strict=True)):
        when = p.ts.strftime("%H:%M:%S")
        if val is None:
            out.append(
                f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{PAD_T + plot_h - 10:.1f}" '
                f'y2="{PAD_T + plot_h:.1f}" class="failed-tick"><title>{when} {escape(p.status)}'
                f"</title></line>"
            )
            continue
        cls = "point pattern" if p.in_pattern else "point"
        radius = 4 if p.in_pattern else 2.5
        out.append(
            f'<circle cx="{x(i):.1f}" cy="{y(val):.1f}" r="{radius}" class="{cls}">'
            f"<title>{when} {fmt(val)}</title></circle>"
        )
        if p.trigger:
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(val):.1f}" r="8" class="trigger-ring"/>')
    at_probe: dict[str, list[ViolationMark]] = {}
    for m in marks:
        at_probe.setdefault(m.point_id, []).append(m)
    for i, (p, val) in enumerate(zip(points, values, strict=True)):
        group = sorted(
            at_probe.get(p.id, []), key=lambda m: (SEVERITY_RANK.get(m.severity, len(SEVERITY_RANK)), m.rule)
        )
        if not group or [m.id for m in group] == [v.id]:
            continue
        # A failed probe has no value: its mark stands over its red tick.
        cy = y(val) if val is not None else PAD_T + plot_h - 18
        out.append(violation_mark(group, x(i), cy, v.provider, v.model, top=PAD_T))
    out += on_top
    if points:
        labelled_at = {0, len(points) - 1}
        if trigger is not None:
            # The trigger's time matters most: an end label it would overprint (a violation
            # near the window's edge, a recent one) gives way to it.
            labelled_at = {i for i in labelled_at if abs(x(i) - x(trigger)) >= LABEL_W} | {trigger}
        for i in sorted(labelled_at):
            anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
            out.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - 10}" class="tick" text-anchor="{anchor}">'
                f"{points[i].ts.strftime('%H:%M:%S')}</text>"
            )
    else:
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{PAD_T + plot_h / 2:.1f}" class="empty-note" '
            'text-anchor="middle">no stored probes around this violation</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))
