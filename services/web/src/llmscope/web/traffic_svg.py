"""A traffic chart as inline SVG: one point per minute, the center line, and the upper limit of
each minute at its own number of requests (a busy minute's median is known better, so its limit
is closer), drawn as steps."""

from __future__ import annotations

from datetime import datetime
from html import escape

from markupsafe import Markup

from llmscope.proto.charts import ChartRecord
from llmscope.web.svg import HEIGHT, LABEL_GAP, PAD_B, PAD_L, PAD_R, PAD_T, WIDTH
from llmscope.web.svg_axes import (
    CHAR_PX,
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
from llmscope.web.traffic import TRAFFIC_LABELS
from llmscope.web.userinfo import without_password


def render_traffic_chart(record: ChartRecord, *, width: int = WIDTH, height: int = HEIGHT) -> Markup:
    """The chart as an ``<svg>`` element (viewBox-sized); narrow (a phone's), in the control
    chart's compact layout: the line labels inside the plot."""
    traffic, view = record.traffic, record.view
    points = list(traffic.recent) if traffic is not None else []
    compact = is_narrow(width)
    pad_l, pad_r = side_pads(width, PAD_L, PAD_R)
    plot_w, plot_h = width - pad_l - pad_r, height - PAD_T - PAD_B
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
        return pad_l + (ts.timestamp() - t0) / (t1 - t0) * plot_w

    def y(v: float) -> float:
        return PAD_T + (hi - v) / (hi - lo) * plot_h

    meta = record.meta
    label = (
        f"traffic · {meta.provider}/{meta.model} · service {without_password(meta.target)} · {meta.metric}"
    )
    out = [
        f'<svg class="control-chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{pad_l}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" class="plot-bg"/>',
    ]
    frame = Frame(pad_l, PAD_T, plot_w, plot_h, height, compact)
    value_axis(out, frame, nice_ticks(lo, hi), y)
    if points:
        time_axis(out, frame, t0, t1, points[0].ts.tzinfo)
    mid_y = PAD_T + plot_h / 2
    unit_label(out, frame, TRAFFIC_LABELS.get(meta.metric, meta.metric))
    # The labels name values: the limit is the latest minute's, at its own number of requests
    # (it read "UCL at n", a literal n that said neither). Drawn after the data on a phone, where
    # they sit inside the plot; one that would overprint the other is left out, the limit first.
    labels: list[tuple[float, str, str]] = []
    limited = [p for p in points if p.ucl is not None]
    if limited:
        last = limited[-1]
        assert last.ucl is not None
        path = " ".join(f"{x(p.ts):.1f},{y(p.ucl):.1f}" for p in limited if p.ucl is not None)
        out.append(f'<polyline points="{path}" class="limit ucl-steps"/>')
        text = f"UCL {fmt(last.ucl)} n={last.n}"
        if not compact and len(text) * CHAR_PX > pad_r - 6:
            text = f"UCL {fmt(last.ucl)}"  # the right margin holds no more (a limit over 1,000)
        labels.append((y(last.ucl), "limit", text))
    if center is not None:
        cy = y(center)
        out.append(f'<line x1="{pad_l}" x2="{pad_l + plot_w}" y1="{cy:.1f}" y2="{cy:.1f}" class="center"/>')
        labels.append((cy, "center", f"CL {fmt(center)}"))
    on_top: list[str] = []
    placed: list[float] = []
    for ly, cls, text in labels:
        if all(abs(ly - other) >= LABEL_GAP for other in placed):
            placed.append(ly)
            (on_top if compact else out).append(line_label(frame, ly, cls, text))
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
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{mid_y:.1f}" class="empty-note" text-anchor="middle">'
            "no minute with enough requests yet</text>"
        )
    if view is not None and view.phase == "collecting":
        out.append(
            f'<text x="{pad_l + plot_w / 2:.1f}" y="{PAD_T + 24}" class="baseline-note" text-anchor="middle">'
            f"collecting baseline {view.progress}/{view.baseline_n} minutes</text>"
        )
    out.extend(on_top)
    out.append("</svg>")
    return Markup("".join(out))
