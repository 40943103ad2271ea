"""The chart page's "Chart settings" panel: a model's SPC settings, shown and changed by a form.

The API implements :class:`ChartSettingsData` over the overrides bucket the SPC engine watches
(contract: :mod:`llmscope.proto.chartconfig`). The form edits either the model's settings (all
metrics) or this metric's; an empty field keeps the engine's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlencode

import msgspec
from fastapi import APIRouter, Query, Request
from fastapi.params import Depends
from fastapi.responses import HTMLResponse

from llmscope.proto.chartconfig import METRIC_NAMES, ChartSettings, ModelConfigView, ModelOverrides
from llmscope.web.pages import Pages
from llmscope.web.userinfo import printed_chart_key

Scope = Literal["model", "metric"]
FieldKind = Literal["choice", "bool", "int", "float", "floats"]
SEVERITY_CHOICES = ("critical", "warning", "info")


class SettingsRejected(ValueError):
    """A setting is invalid; ``path`` is its JSON path in the overrides (``$.cusum.h``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class SettingsUnavailable(RuntimeError):
    """The settings cannot be read or written now (no NATS connection)."""


class ChartSettingsData(Protocol):
    """A model's chart settings, as the API reads and writes them."""

    async def view(self, provider: str, model: str) -> ModelConfigView: ...

    async def put(self, provider: str, model: str, body: bytes) -> ModelConfigView: ...

    async def delete(self, provider: str, model: str) -> ModelConfigView: ...


@dataclass(frozen=True, slots=True)
class SettingField:
    """One input of the form: its path in the settings, label, and how to read it."""

    path: str
    label: str
    kind: FieldKind
    choices: tuple[str, ...] = ()


def _rule_fields(n: int) -> list[SettingField]:
    k_kind: FieldKind = "float" if n == 1 else "int"
    return [
        SettingField(f"rules.r{n}.enabled", f"Nelson test {n}", "bool"),
        SettingField(f"rules.r{n}.k", f"test {n} K", k_kind),
        SettingField(f"rules.r{n}.severity", f"test {n} severity", "choice", SEVERITY_CHOICES),
    ]


FIELDS: tuple[SettingField, ...] = (
    SettingField("transform", "Transform", "choice", ("log", "none")),
    SettingField("baseline_n", "Baseline points", "int"),
    SettingField("sigma_estimator", "Sigma estimator", "choice", ("mr", "sd")),
    SettingField("clear_after", "Quiet points before clearing", "int"),
    SettingField("spike.enabled", "Spike", "bool"),
    SettingField("spike.k", "spike k (sigma)", "float"),
    SettingField("spike.severity", "spike severity", "choice", SEVERITY_CHOICES),
    SettingField("cusum.enabled", "CUSUM", "bool"),
    SettingField("cusum.k", "CUSUM k (sigma, comma-separated)", "floats"),
    SettingField("cusum.h", "CUSUM h (sigma, one per k)", "floats"),
    SettingField("cusum.severity", "CUSUM severity", "choice", SEVERITY_CHOICES),
    SettingField("ewma.enabled", "EWMA", "bool"),
    SettingField("ewma.lam", "EWMA lambda", "float"),
    SettingField("ewma.L", "EWMA L", "float"),
    SettingField("ewma.severity", "EWMA severity", "choice", SEVERITY_CHOICES),
    *(f for n in range(1, 9) for f in _rule_fields(n)),
)
BASELINE_PATHS = frozenset({"transform", "baseline_n", "sigma_estimator"})


def lookup(settings: msgspec.Struct | None, path: str) -> Any:
    """The value at a dotted path of a settings struct, or None."""
    value: Any = settings
    for part in path.split("."):
        if value is None:
            return None
        value = getattr(value, part, None)
    return value


def show(value: Any) -> str:
    """A value as the form writes it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ", ".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _parse(field: SettingField, text: str) -> Any:
    try:
        if field.kind == "bool":
            return {"on": True, "off": False}[text]
        if field.kind == "int":
            return int(text)
        if field.kind == "float":
            return float(text)
        if field.kind == "floats":
            return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except (KeyError, ValueError):
        raise SettingsRejected(f"$.{field.path}", f"not a valid {field.kind}: {text!r}") from None
    return text


def parse_form(form: dict[str, str]) -> dict[str, Any]:
    """The settings the form sets, as nested JSON objects (empty fields are left out)."""
    out: dict[str, Any] = {}
    for field in FIELDS:
        text = (form.get(field.path) or "").strip()
        if not text:
            continue
        *parents, leaf = field.path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _parse(field, text)
    return out


def build_overrides(
    current: ModelOverrides | None, scope: Scope, metric: str, settings: dict[str, Any], by: str, reason: str
) -> bytes:
    """The model's new overrides: the form's settings for its scope, the rest kept as it was."""
    base: dict[str, Any] = {} if current is None else msgspec.to_builtins(current)
    for key in ("updated_at", "version"):
        base.pop(key, None)
    if scope == "model":
        keep = {"metrics": base["metrics"]} if "metrics" in base else {}
        base = {**keep, **settings}
    else:
        metrics = dict(base.get("metrics") or {})
        if settings:
            metrics[metric] = settings
        else:
            metrics.pop(metric, None)
        base["metrics"] = metrics
    base["updated_by"] = by
    base["reason"] = reason
    return msgspec.json.encode(base)


def add_chart_settings_routes(
    router: APIRouter, data: ChartSettingsData, session: Depends, pages: Pages
) -> None:
    """``GET``/``POST /charts/settings``: the panel (a fragment for HTMX, else a whole page)."""

    async def render(
        request: Request,
        *,
        provider: str,
        model: str,
        metric: str,
        scope: Scope,
        chart_key: str,
        interval_s: float | None,
        message: str | None = None,
        error: SettingsRejected | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        metric = metric if metric in METRIC_NAMES else "latency_ms"
        try:
            view: ModelConfigView | None = await data.view(provider, model)
        except SettingsUnavailable:
            view = None
        overrides = view.overrides if view is not None else None
        scoped: ChartSettings | None = None
        if overrides is not None:
            scoped = overrides.settings() if scope == "model" else getattr(overrides.metrics, metric, None)
        charts = [c for c in (view.charts if view else []) if c.metric == metric]
        # The key as the dashboard links to it (its target's password hidden: ``userinfo``).
        chart_key = printed_chart_key(chart_key)
        chart = next(
            (c for c in charts if printed_chart_key(c.key) == chart_key), charts[0] if charts else None
        )
        effective = (view.effective or {}).get(metric) if view else None
        query = {
            "provider": provider,
            "model": model,
            "metric": metric,
            "scope": scope,
            "chart_key": chart_key,
            "interval_s": "" if interval_s is None else f"{interval_s:g}",
        }
        context = {
            "s": query,
            "qs": urlencode(query),
            "view": view,
            "fields": FIELDS,
            "baseline_paths": BASELINE_PATHS,
            "effective": effective,
            "scoped": scoped,
            "overrides": overrides,
            "chart": chart,
            "pending": [c for c in (view.charts if view else []) if not c.applied],
            "interval_s": interval_s,
            "lookup": lookup,
            "show": show,
            "message": message,
            "error": error,
            "unavailable": view is None,
        }
        return pages.render(
            request,
            "chart_settings.html",
            context,
            fragments=("chart_settings", "settings_status"),
            status_code=status,
            # The outcome is also written beside the form; the toast is seen wherever one scrolled.
            toast=(f"Not saved: {error}", "error") if error else message,
        )

    @router.get("/charts/settings", response_class=HTMLResponse, dependencies=[session])
    async def chart_settings(
        request: Request,
        provider: str,
        model: str,
        metric: str = "latency_ms",
        scope: Scope = "model",
        chart_key: str = "",
        interval_s: Annotated[float | None, Query(gt=0)] = None,
    ) -> HTMLResponse:
        return await render(
            request,
            provider=provider,
            model=model,
            metric=metric,
            scope=scope,
            chart_key=chart_key,
            interval_s=interval_s,
        )

    @router.post("/charts/settings", response_class=HTMLResponse, dependencies=[session])
    async def save_chart_settings(request: Request) -> HTMLResponse:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        provider, model = form.get("provider", ""), form.get("model", "")
        metric = form.get("metric", "latency_ms")
        scope: Scope = "metric" if form.get("scope") == "metric" else "model"
        interval = form.get("interval_s", "")
        args: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "metric": metric,
            "scope": scope,
            "chart_key": form.get("chart_key", ""),
            "interval_s": float(interval) if interval.replace(".", "", 1).isdigit() else None,
        }
        status = 200
        message = None
        error = None
        try:
            if form.get("action") == "reset":
                await data.delete(provider, model)
                message = "Overrides removed: the engine goes back to its defaults at the next probe."
            else:
                by = form.get("by", "").strip()
                if not by:
                    raise SettingsRejected("$.updated_by", "who changes the settings is required")
                current = (await data.view(provider, model)).overrides
                body = build_overrides(
                    current, scope, metric, parse_form(form), by, form.get("reason", "").strip()
                )
                await data.put(provider, model, body)
                message = "Saved: the engine applies the settings at each chart's next probe."
        except SettingsRejected as exc:
            error, status = exc, 422
        except SettingsUnavailable:
            error, status = SettingsRejected("$", "settings cannot be saved now (no NATS connection)"), 503
        if request.headers.get("HX-Request") == "true":
            status = 200  # htmx swaps only 2xx answers; the fragment carries the outcome
        return await render(request, **args, message=message, error=error, status=status)
