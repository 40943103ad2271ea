"""A traffic chart as inline SVG: one point per minute, the center line, and the upper limit of
each minute at its own number of requests (a busy minute's median is known better, so its limit
is closer), drawn as steps."""

from __future__ import annotations

from datetime import datetime
from html import escape

from markupsafe import Markup

from llmscope.proto.charts import ChartRecord
from llmscope.web.svg import HEIGHT, PAD_B, PAD_L, PAD_R, PAD_T, WIDTH
from llmscope.web.svg_axes import Frame, fmt, nice_ticks, time_axis, unit_label, value_axis
from llmscope.web.traffic import TRAFFIC_LABELS


def render_traffic_chart(record: ChartRecord, *, width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """The chart as an ``<svg>`` element (viewBox-sized)."""
    traffic, view = record.traffic, record.view
    points = list(traffic.recent) if traffic is not None else []
    plot_w, plot_h = width - PAD_L - PAD_R, height - PAD_T - PAD_B
    center = view.limits.center if view is not None and view.limits is not None else None
    values = [p.value for p in points] + [p.ucl for p in points if p.ucl is not None]
    if center is not None:
        values.append(center)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo = 0.0 if lo >= 0 else lo
    hi = hi * 1.06 if hi > lo else lo + 1.0
    t0 = points[0].ts.timestamp() if points else 0.0
    # The points span the plot; one point alone sits at the left of a minute.
    t1 = points[-1].ts.timestamp() if len(points) > 1 else t0 + 60.0

    def x(ts: datetime) -> float:
        return PAD_L + (ts.timestamp() - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * plot_h

    meta = record.meta
    label = f"traffic · {meta.provider}/{meta.model} · service {meta.target} · {meta.metric}"
    out = [
        f'<svg class="control-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    frame = Frame(PAD_L, PAD_T, plot_w, plot_h, height)
    value_axis(out, frame, nice_ticks(lo, hi), y)
    if points:
        time_axis(out, frame, t0, t1, points[0].ts.tzinfo)
    mid_y = PAD_T + plot_h / 2
    unit_label(out, frame, TRAFFIC_LABELS.get(meta.metric, meta.metric))
    if center is not None:
        cy = y(center)
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + plot_w}" y1="{cy:.1f}" y2="{cy:.1f}" class="center"/>')
        out.append(
            f'<text x="{PAD_L + plot_w + 4}" y="{cy + 4:.1f}" class="center-label">CL {fmt(center)}</text>'
        )
    steps = [(x(p.ts), y(p.ucl)) for p in points if p.ucl is not None]
    if steps:
        path = " ".join(f"{sx:.1f},{sy:.1f}" for sx, sy in steps)
        out.append(f'<polyline points="{path}" class="limit ucl-steps"/>')
        out.append(
            f'<text x="{PAD_L + plot_w + 4}" y="{steps[-1][1] + 4:.1f}" class="limit-label">UCL at n</text>'
        )
    if points:
        line = " ".join(f"{x(p.ts):.1f},{y(p.value):.1f}" for p in points)
        out.append(f'<polyline points="{line}" class="series"/>')
        for p in points:
            cls = "point out" if p.ucl is not None and p.value > p.ucl else "point"
            out.append(
                f'<circle cx="{x(p.ts):.1f}" cy="{y(p.value):.1f}" r="2.5" class="{cls}">'
                f"<title>{p.ts.strftime('%H:%M')} {fmt(p.value)} over {p.n} requests"
                f"{'' if p.ucl is None else f' (limit {fmt(p.ucl)})'}</title></circle>"
            )
    else:
        out.append(
            f'<text x="{PAD_L + plot_w / 2:.1f}" y="{mid_y:.1f}" class="empty-note" text-anchor="middle">'
            "no minute with enough requests yet</text>"
        )
    if view is not None and view.phase == "collecting":
        out.append(
            f'<text x="{PAD_L + plot_w / 2:.1f}" y="{PAD_T + 24}" class="baseline-note" text-anchor="middle">'
            f"collecting baseline {view.progress}/{view.baseline_n} minutes</text>"
        )
    out.append("</svg>")
    return Markup("".join(out))
