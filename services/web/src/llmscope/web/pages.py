"""Template rendering: a full page, or one named block of it when HTMX asks (``HX-Request``).

The block is chosen by the ``HX-Target`` element id (``chart-panel`` -> block ``chart_panel``)
when the page declares it as a fragment; any other HTMX request gets the page's ``content`` block.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, pass_context, select_autoescape
from jinja2.runtime import Context
from jinja2_fragments import render_block
from markupsafe import Markup, escape

from llmscope.proto.charts import is_traffic_chart
from llmscope.web.compression import mark_secret_free
from llmscope.web.data import (
    METRIC_LABELS,
    METRIC_UNITS,
    DashboardData,
    RebaselineResult,
    Violation,
    ViolationDetail,
    failed_probes_text,
)
from llmscope.web.live import chart_pace_s, point_event, traffic_event
from llmscope.web.minichart import render_minichart
from llmscope.web.remembered_by import refuse_by, template_remembered_by
from llmscope.web.rules_legend import BY_CODE, RULES
from llmscope.web.short_url import short_url
from llmscope.web.svg import PAD_R as CHART_PAD_R
from llmscope.web.svg import mark_key, render_chart, render_sparkline, time_range
from llmscope.web.trend_svg import color, render_availability, render_comparison
from llmscope.web.trends import window_label
from llmscope.web.userinfo import printed_chart_key, without_password


def _ago(ts: datetime | None, now: datetime | None = None) -> str:
    if ts is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - ts).total_seconds()
    if seconds < 60:
        return f"{max(seconds, 0):.0f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _measured(value: float | None, metric: str, digits: int = 1) -> str:
    """A value with its metric's unit: "1,895.2 ms"; a count of failed probes without decimals."""
    unit = METRIC_UNITS.get(metric, "")
    text = _num(value, 0 if metric == "availability" else digits)
    return f"{text} {unit}" if unit and value is not None else text


def _violation_value(v: Violation, digits: int = 1) -> str:
    """A violation's value with its unit; an availability chart's failed probes as its rule
    counts them: a run (AVAILABILITY) or failures within the window (ERROR_RATE)."""
    if v.metric == "availability":
        return failed_probes_text(v.value, v.rule, v.rule_name)
    return _measured(v.value, v.metric, digits)


_ERROR_RATE_NAME = re.compile(r">=\s*(\d+) failures in the last (\d+) probes")


NOT_A_RATE = (
    "The stored limits are not a failure rate (over 100 %): they are another chart's, not what the "
    "engine writes for an availability chart, so no rate is shown."
)


def _not_a_rate(v: Violation, key: str = "center") -> bool:
    """Whether an availability violation's stored ``key`` limit is over 1: no failure rate or
    share (a latency chart's limits, center 100, read "failure rate 10,000.00 %")."""
    return float(v.limits.get(key) or 0) > 1


def _not_a_rate_cell() -> Markup:
    return Markup('<span class="not-a-rate" title="{}">–</span>').format(NOT_A_RATE)


def _alarm_threshold(v: Violation) -> str | Markup:
    """An availability violation's alarm threshold: the run that fires AVAILABILITY (its rule
    name), or ERROR_RATE's failures in the window with their share; "–" where the engine knew
    none (its baseline still collecting: it writes a share of 1, which is no threshold)."""
    if v.rule.upper() == "AVAILABILITY":
        return v.rule_name if v.rule_name.endswith(" in a row") else "–"
    if float(v.limits.get("center") or 0) <= 0:
        return "–"
    if _not_a_rate(v, "ucl"):
        return _not_a_rate_cell()
    share = f"{float(v.limits.get('ucl') or 0) * 100:.1f} % of the window"
    if found := _ERROR_RATE_NAME.search(v.rule_name):
        return f"{found[1]} failed probes in the last {found[2]} ({share})"
    return f"{share} failing"


_FAILURE_RATE_REASON = "failure rate"
"""What the engine wrote as an availability baseline's reason before it wrote why (as every
chart's): "failure rate", or "failure rate; " and the re-baseline's reason. Stored violations
keep it."""


def _baseline_text(v: Violation) -> str:
    """The Baseline row: a metric chart's baseline id, its size and why it was started; an
    availability chart's in words, with its failure rate ("baseline of 40 probes, failure rate
    2.38 %"), since its id is its chart key, escaped, and its reason alone read "n=40, failure
    rate", cut short. Events the engine wrote before its reason said why are read the same."""
    b = v.baseline
    n, reason = int(b.get("n") or 0), str(b.get("reason") or "")
    if v.metric != "availability":
        return f"{b.get('id', '')} (n={n}, {reason})"
    if reason == _FAILURE_RATE_REASON or reason.startswith(_FAILURE_RATE_REASON + "; "):
        reason = reason.removeprefix(_FAILURE_RATE_REASON).removeprefix("; ")
    probes = f"{n:,} probe{'' if n == 1 else 's'}"
    rate = float(v.limits.get("center") or 0)
    # Still collecting, the engine writes a rate of 0: no estimate (as the failure-rate row says).
    # Over 1 it is no rate at all: the failure-rate row's "–" says why.
    if rate > 1:
        text = f"baseline of {probes}"
    elif rate > 0:
        text = f"baseline of {probes}, failure rate {rate * 100:,.2f} %"
    else:
        text = f"still collecting: {probes} so far"  # the rate's row says it is not known yet
    if reason and reason != "initial baseline":
        by = str(b.get("created_by") or "")
        text += f"; re-baselined by {by}: {reason}" if by and by != "engine" else f"; {reason}"
    return text


@dataclass(frozen=True, slots=True)
class PatternPoint:
    """A row of "Points that formed the pattern": ``value`` None when the event carries none and
    the probe is not among the stored ones (retention removed it, or it never was stored)."""

    id: str
    ts: datetime | None
    value: str | None


GONE_NOTE = "the probe is not among the stored ones (retention may have removed it)."
"""Why a point of a pattern has no value on the page (short in its cell: a phone's is narrow)."""


def _pattern_points(d: ViolationDetail) -> list[PatternPoint]:
    """The points that formed a violation's pattern, each with its time and value as the event
    gives them, else as its stored probe does: an availability pattern is its trigger, a failed
    probe, whose value is its status; the event's time is that probe's (the engine dates it so)."""
    v = d.violation
    stored = {c.id: c for c in d.nearby or d.context}
    avail = v.metric == "availability"
    out: list[PatternPoint] = []
    for i, pid in enumerate(v.point_ids):
        probe = stored.get(pid)
        ts = v.point_ts[i] if i < len(v.point_ts) else probe.ts if probe is not None else None
        if ts is None and avail and i == len(v.point_ids) - 1:
            ts = v.ts
        if i < len(v.point_values):
            value: str | None = _measured(v.point_values[i], v.metric, 2)
        elif probe is not None:
            value = probe.status if avail or probe.value is None else _measured(probe.value, v.metric, 2)
        else:
            value = None
        out.append(PatternPoint(pid, ts, value))
    return out


_UNITS = (("year", 365.25 * 86400), ("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0))


def _duration(seconds: float | None) -> str:
    """``777600`` -> "9 days": the largest unit that still counts at least two of it."""
    if seconds is None:
        return "–"
    for name, size in _UNITS:
        if seconds >= 2 * size or size == 1.0:
            value = seconds / size
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
            return f"{text} {name}{'' if text == '1' else 's'}"
    raise AssertionError("unreachable")


def _pct(value: float | None, digits: int = 1) -> str:
    """``12.5`` -> "12.5 %"; unknown is a bare "–" (never "– %")."""
    return "–" if value is None else f"{value:,.{digits}f} %"


def _sigma(sigma: float | None, transform: str, unit: str) -> str:
    """A chart's sigma in words a reader can use: in the metric's units on a raw chart; on a log
    chart, natural-log units and the factor one sigma is (0.2 -> "0.2000 in log units: one σ is
    x1.22")."""
    if sigma is None:
        return "–"
    if transform == "log":
        return f"{sigma:.4f} in log units: one σ is ×{math.exp(sigma):.2f}"
    return f"{sigma:,.2f}{unit}"


_BREAK_BEFORE = frozenset("./?&=#")


def _url_breaks(text: object) -> Markup:
    """A URL (a target) or a snake_case name with ``<wbr>`` where a line may break: after its
    scheme's ``//``, a colon and an underscore, before a dot, a slash, ``?``, ``&``, ``=`` and
    ``#``, never inside a word (a narrow table cell cut "api.openai.com" as "api.ope|nai.com")."""
    s = "" if text is None else str(text)
    out: list[str] = []
    start = 0
    for i in range(1, len(s)):
        pair = s[i - 1 : i + 1]
        if pair in ("//", ":/"):
            continue
        if s[i] in _BREAK_BEFORE or s[i - 1] in ":_" or s[i - 2 : i] == "//":
            out.append(escape(s[start:i]))
            start = i
    out.append(escape(s[start:]))
    return Markup("<wbr>").join(out)


def _ts(value: datetime | None) -> str:
    return "–" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# With live updates, a fragment also polls this slowly: the fallback for a tab whose event
# stream is down (a proxy that cuts it, the API restarting). While the stream is up the poll's
# filter stops it (``static/live.js`` keeps ``window.llmscopeLive``): an idle tab asks nothing.
LIVE_FALLBACK_S = 30.0
LIVE_FALLBACK_FILTER = "[!llmscopeLive]"
# Fired on the body when the stream is back after a break: every live fragment re-reads once.
LIVE_RESUMED = "live-resumed from:body"


def live_page(ctx: Mapping[str, Any] | Context) -> bool:
    """Whether the page listens to ``/events``: live updates are on and a session is signed in
    (the public status page polls)."""
    request = ctx.get("request")
    state = getattr(request, "state", None)
    return bool(ctx.get("live")) and getattr(state, "csrf_token", None) is not None


@pass_context
def _live_trigger(ctx: Context, events: str, refresh_s: float, pace: str = "delay:1s") -> str:
    """An ``hx-trigger``: re-read on these server-sent events (by default a burst within 1 s is
    one re-read) and once when the stream resumes after a break, with a slow poll as the
    fallback while the stream is down; or poll every ``refresh_s`` without live updates. A
    steady stream (a chart's points) takes ``throttle:…``: a delay would keep restarting and
    never fire."""
    if not live_page(ctx):
        return f"every {refresh_s}s"
    listen = ", ".join(f"sse:{name} {pace}" for name in events.split())
    return f"{listen}, {LIVE_RESUMED}, every {max(refresh_s, LIVE_FALLBACK_S):g}s {LIVE_FALLBACK_FILTER}"


# Charts are drawn for the reader's viewport (``static/viewport.js`` keeps it in this cookie): a
# phone's chart is narrower in its own units, so it fits its card and its 11 px text stays about
# 10 px on screen, where a 960-wide chart shrunk to a phone's card drew it at 4 px.
VIEWPORT_COOKIE = "llmscope_vw"
CHART_WIDTH = 960
CHART_MIN_WIDTH = 360
CARD_CHROME_PX = 48
"""What the page's and the card's padding and borders take of the viewport's width, at most."""
CHART_SCALE = 0.9
"""The least a phone's chart is scaled down to fit its card (text 11 px -> 10 px)."""


def chart_width(viewport: str | None) -> int:
    """The width, in the chart's own units, to draw a chart at for a viewport ``viewport`` CSS px
    wide (the cookie's text; none or nonsense: a laptop's): the card's width divided by
    ``CHART_SCALE``, in steps of 20, between ``CHART_MIN_WIDTH`` and ``CHART_WIDTH`` (wider
    screens scale the 960 up, as before)."""
    try:
        vw = int(viewport or "")
    except ValueError:
        return CHART_WIDTH
    if vw <= 0:
        return CHART_WIDTH
    fit = int((vw - CARD_CHROME_PX) / CHART_SCALE) // 20 * 20
    return max(CHART_MIN_WIDTH, min(CHART_WIDTH, fit))


def request_chart_width(request: Request) -> int:
    return chart_width(request.cookies.get(VIEWPORT_COOKIE))


def build_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("llmscope.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = _ago
    env.filters["num"] = _num
    env.globals["measured"] = _measured
    env.globals["violation_value"] = _violation_value
    env.globals["alarm_threshold"] = _alarm_threshold
    env.globals["not_a_rate"] = NOT_A_RATE
    env.globals["baseline_text"] = _baseline_text
    env.globals["pattern_points"] = _pattern_points
    env.globals["gone_note"] = GONE_NOTE
    env.globals["metric_units"] = METRIC_UNITS
    env.filters["ts"] = _ts
    env.filters["url_breaks"] = _url_breaks
    env.filters["short_url"] = lambda text: short_url(text, _url_breaks)
    env.filters["no_password"] = without_password
    env.filters["printed_key"] = printed_chart_key
    env.filters["pct"] = _pct
    env.globals["sigma_text"] = _sigma
    env.globals["metric_labels"] = METRIC_LABELS
    env.globals["rules_legend"] = RULES
    env.globals["rule_meaning"] = BY_CODE
    env.globals["is_traffic_chart"] = is_traffic_chart
    env.filters["duration"] = _duration
    env.filters["window"] = window_label
    env.globals["render_chart"] = render_chart
    env.globals["render_sparkline"] = render_sparkline
    env.globals["render_minichart"] = render_minichart
    env.globals["mark_key"] = mark_key
    env.globals["render_comparison"] = render_comparison
    env.globals["render_availability"] = render_availability
    env.globals["chart_time_range"] = time_range
    env.globals["chart_pad_r"] = CHART_PAD_R
    env.globals["chart_width"] = CHART_WIDTH  # a page rendered with a request: its reader's
    env.globals["print_chart_width"] = CHART_WIDTH  # paper's (templates/_print_width.html)
    env.globals["series_color"] = color
    env.globals["live_trigger"] = _live_trigger
    env.globals["point_event"] = point_event
    env.globals["chart_pace_s"] = chart_pace_s
    env.globals["traffic_event"] = traffic_event
    env.globals["live_page"] = pass_context(live_page)
    env.globals["remembered_by"] = pass_context(template_remembered_by)
    return env


def toast_trigger(message: str, level: str = "ok") -> dict[str, str]:
    """The ``HX-Trigger`` header that makes ``static/toast.js`` show ``message``.

    ASCII JSON: header values are Latin-1, and htmx decodes the ``\\u`` escapes.
    """
    return {"HX-Trigger": json.dumps({"toast": {"message": message, "level": level}})}


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


async def ask_rebaseline(
    data: DashboardData, request: Request, chart_key: str, by: str, reason: str
) -> tuple[RebaselineResult, int]:
    """Ask the SPC engine to re-baseline a chart (probe or traffic): the outcome and the status to
    answer with."""
    who, why = by.strip(), reason.strip()
    if not who or not why:
        missing = "by" if not who else "reason"
        result = RebaselineResult(status="refused", chart_key=chart_key, error=f"{missing}: required")
        status = 422
    else:
        result = await data.rebaseline(chart_key, who, why)
        status = {"ok": 200, "refused": 409, "no_engine": 504}[result.status]
    if is_htmx(request):
        status = 200  # htmx swaps only 2xx answers, and the fragment carries the outcome
    return result, status


BY_REQUIRED = "by: required: the name recorded as who {done} it"
"""A dashboard acknowledgement, resolution or settings save with a blank name is refused, never
signed for nobody (it was recorded as "dashboard")."""
BY_MAX = 200


def who_from(raw: object, done: str) -> tuple[str, str]:
    """The name typed in a form's ``by`` field, and the error naming ``by`` when it is blank
    or too long (empty when it will do)."""
    who = raw.strip() if isinstance(raw, str) else ""
    if not who:
        return "", BY_REQUIRED.format(done=done)
    if len(who) > BY_MAX:
        return "", f"by: at most {BY_MAX} characters"
    return who, ""


def rebaseline_toast(status: str, error: str, done: str) -> tuple[str, str]:
    """The toast after a re-baseline, worded once for every page: ``done`` says what was
    re-baselined ("Chart re-baselined", "Traffic chart re-baselined")."""
    if status == "ok":
        return f"{done}.", "ok"
    if status == "no_engine":
        return "No SPC engine answered: nothing was re-baselined.", "error"
    return f"Re-baseline refused: {error}", "error"


class Pages:
    """Renders pages and their fragments."""

    def __init__(self, env: Environment | None = None, *, live: bool = False) -> None:
        """``live``: the app serves ``/events`` (pages listen to it instead of polling)."""
        self.env = env or build_environment()
        self.live = live

    def block_for(self, request: Request, fragments: Iterable[str]) -> str | None:
        """The block an HTMX request wants, or None for a full page."""
        if not is_htmx(request):
            return None
        target = (request.headers.get("HX-Target") or "").replace("-", "_")
        return target if target in set(fragments) else "content"

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        fragments: Iterable[str] = (),
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        toast: str | tuple[str, str] | None = None,
        block: str | None = None,
        polled: Iterable[str] = (),
    ) -> HTMLResponse:
        """``toast``: a message for ``static/toast.js``, or ``(message, level)``; ``block``: the
        block to render whatever the request (one of several forms that share a template);
        ``polled``: the fragments that live events and fallback polls re-read (see
        :meth:`_polled`)."""
        ctx = {
            "request": request,
            "path": request.url.path,
            "live": self.live,
            "chart_width": request_chart_width(request),
            **context,
        }
        block = block or self.block_for(request, fragments)
        if block is None:
            html = self.env.get_template(template).render(ctx)
        else:
            html = render_block(self.env, template, block, ctx)
        # The chart width comes from the llmscope_vw cookie (and the session from its own): a
        # cache keyed on the URL alone would serve one screen's charts to another.
        vary = "HX-Request, HX-Target, Cookie"
        polled_get = request.method == "GET" and status_code == 200 and not toast
        if block is not None and block in set(polled) and polled_get:
            return self._polled(request, html, vary, dict(headers or {}))
        response = HTMLResponse(html, status_code=status_code, headers=dict(headers or {}))
        response.headers["Vary"] = vary
        if toast:
            message, level = (toast, "ok") if isinstance(toast, str) else toast
            response.headers.update(toast_trigger(message, level))
            if level == "error":
                refuse_by(request)  # refused, if a 200 for htmx: the form's name is not remembered
        return response

    @staticmethod
    def _polled(request: Request, html: str, vary: str, headers: dict[str, str]) -> HTMLResponse:
        """A polled fragment. It holds no secret: the CSRF token is only in ``base.html``, which a
        fragment never renders; so it may be gzipped (:mod:`llmscope.web.compression`; pages,
        with the token, never are). Its ``ETag`` is a hash of its bytes, so it changes whenever
        they would; ``no-cache`` makes the browser ask each time, with ``If-None-Match``, and a
        match is a bodiless ``304`` (an idle tab whose fallback poll finds nothing new)."""
        mark_secret_free(request)
        body = html.encode()
        etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
        headers |= {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": f"{vary}, Accept-Encoding"}
        if etag_matches(request.headers.get("If-None-Match", ""), etag):
            return HTMLResponse(b"", status_code=304, headers=headers)
        return HTMLResponse(body, headers=headers)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """``If-None-Match`` against an ``ETag``, by weak comparison (RFC 9110 13.1.2): a gzipped
    answer's tag comes back weakened (``W/"..."``)."""
    if if_none_match.strip() == "*":
        return True
    tags = (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    return etag.removeprefix("W/") in tags
