"""A traffic chart as inline SVG: one point per minute, the center line, and the upper limit of
each minute at its own number of requests (a busy minute's median is known better, so its limit
is closer), drawn as steps."""

from __future__ import annotations

from datetime import datetime
from html import escape

from markupsafe import Markup

from llmscope.proto.charts import ChartRecord
from llmscope.web.svg import HEIGHT, PAD_B, PAD_L, PAD_R, PAD_T, WIDTH, _fmt, _nice_ticks
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
    t1 = max(points[-1].ts.timestamp() if points else 1.0, t0 + 60.0)

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
    for tick in _nice_ticks(lo, hi):
        ty = y(tick)
        out.append(
            f'<line x1="{PAD_L}" x2="{PAD_L + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{PAD_L - 6}" y="{ty + 4:.1f}" class="tick" text-anchor="end">{_fmt(tick)}</text>'
        )
    if points:
        for frac in (0.0, 0.5, 1.0):
            ts = datetime.fromtimestamp(t0 + frac * (t1 - t0), tz=points[0].ts.tzinfo)
            anchor = "start" if frac == 0 else "end" if frac == 1 else "middle"
            out.append(
                f'<text x="{PAD_L + frac * plot_w:.1f}" y="{height - 8}" class="tick" '
                f'text-anchor="{anchor}">{ts.strftime("%H:%M")}</text>'
            )
    mid_y = PAD_T + plot_h / 2
    unit = TRAFFIC_LABELS.get(meta.metric, meta.metric)
    out.append(
        f'<text x="14" y="{mid_y:.1f}" class="axis-label" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid_y:.1f})">{escape(unit)}</text>'
    )
    if center is not None:
        cy = y(center)
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + plot_w}" y1="{cy:.1f}" y2="{cy:.1f}" class="center"/>')
        out.append(
            f'<text x="{PAD_L + plot_w + 4}" y="{cy + 4:.1f}" class="center-label">CL {_fmt(center)}</text>'
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
                f"<title>{p.ts.strftime('%H:%M')} {_fmt(p.value)} over {p.n} requests"
                f"{'' if p.ucl is None else f' (limit {_fmt(p.ucl)})'}</title></circle>"
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
