"""The chart page's settings panel: shown with and without HTMX, saved, refused, reset."""

from __future__ import annotations

import json
import re

import pytest
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from llmscope.proto import subjects
from llmscope.proto.chartconfig import decode_overrides
from llmscope.web.chart_settings import build_overrides, parse_form
from tests.api.conftest import Api
from tests.api.engine import BASELINE_N, eventually, feed, running_engine, wait_progress
from tests.api.test_charts import probes
from tests.web.test_pages import HX, is_full_page, login

pytestmark = pytest.mark.usefixtures("js")

Q = "provider=ollama&model=llama3.1%3A8b&metric=latency_ms"
PANEL = {**HX, "HX-Target": "chart-settings"}
FORM = {
    "provider": "ollama",
    "model": "llama3.1:8b",
    "metric": "latency_ms",
    "chart_key": "",
    "interval_s": "2",
}


def test_the_form_becomes_overrides_for_its_scope() -> None:
    settings = parse_form(
        {"transform": "none", "cusum.k": "0.5, 1", "cusum.h": "5;4", "rules.r2.enabled": "off"}
    )
    assert settings == {
        "transform": "none",
        "cusum": {"k": [0.5, 1.0], "h": [5.0, 4.0]},
        "rules": {"r2": {"enabled": False}},
    }
    current = decode_overrides(
        b'{"updated_by": "x", "baseline_n": 500, "metrics": {"ttft_ms": {"transform": "none"}}}'
    )
    model = decode_overrides(
        build_overrides(current, "model", "latency_ms", {"ewma": {"lam": 0.2}}, "ann", "why")
    )
    assert model.baseline_n is None  # the form replaces the model's settings
    assert model.ewma is not None
    assert model.metrics is not None
    assert model.metrics.ttft_ms is not None  # and keeps the metrics'
    assert (model.updated_by, model.reason) == ("ann", "why")
    metric = decode_overrides(
        build_overrides(current, "metric", "latency_ms", {"baseline_n": 100}, "ann", "")
    )
    assert metric.baseline_n == 500
    assert metric.metrics is not None
    assert metric.metrics.latency_ms is not None
    assert metric.metrics.latency_ms.baseline_n == 100
    cleared = decode_overrides(build_overrides(current, "metric", "ttft_ms", {}, "ann", ""))
    assert cleared.metrics is not None
    assert cleared.metrics.ttft_ms is None


async def test_panel_with_and_without_htmx_save_refuse_and_reset(
    api: Api, js: JetStreamContext, nats_url: str
) -> None:
    client = await login(api)
    events = probes(BASELINE_N + 4)
    async with running_engine(nats_url):
        await feed(api, js, events[: BASELINE_N + 2])
        record = await wait_progress(api, events[0], BASELINE_N, "armed")

        page = await client.get("/dashboard")
        assert '<div id="chart-settings" hx-get="/charts/settings?' in page.text
        for headers in ({}, PANEL):
            r = await client.get(f"/charts/settings?{Q}&chart_key={record.key}&interval_s=2", headers=headers)
            assert r.status_code == 200
            assert is_full_page(r.text) == (headers == {})
            assert r.text.lstrip().startswith("<!doctype") == (headers == {})
            assert "Chart settings · ollama / llama3.1:8b · latency_ms" in r.text
            # The engine's expected interval for the model it fitted, at one probe per 2 s.
            assert record.view is not None
            assert record.view.arl0_critical is not None
            days = record.view.arl0_critical * 2 / 86_400
            shown = re.search(r"Expected false alarms: about one per ([\d.]+) days", r.text)
            assert shown, r.text
            assert float(shown.group(1)) == pytest.approx(days, rel=0.1)
            assert '<span class="badge armed">applied</span>' in r.text
            assert '<select id="set-transform" name="transform">' in r.text
            assert f"<td>{BASELINE_N}</td>" in r.text  # the effective baseline size

        form = {**FORM, "chart_key": record.key, "scope": "model", "by": "ann", "reason": "fewer pages"}
        r = await client.post("/charts/settings", data={**form, "ewma.lam": "2"}, headers=PANEL)
        assert r.status_code == 200  # htmx swaps 2xx only; the fragment says what went wrong
        assert r.text.lstrip().startswith('<div id="chart-settings"')
        assert "Not saved: <code>$.ewma.lam</code> Expected `float` &lt;= 1.0" in r.text
        toast = json.loads(r.headers["hx-trigger"])["toast"]
        assert toast["level"] == "error"
        assert toast["message"].startswith("Not saved: $.ewma.lam: Expected `float` <= 1.0")
        r = await client.post("/charts/settings", data={**form, "ewma.lam": "0.2x"})
        assert r.status_code == 422
        assert is_full_page(r.text)
        assert "<code>$.ewma.lam</code> not a valid float" in r.text
        r = await client.post("/charts/settings", data={**form, "by": "", "rules.r2.enabled": "off"})
        assert r.status_code == 422
        assert "<code>$.updated_by</code>" in r.text

        r = await client.post(
            "/charts/settings",
            data={**form, "rules.r2.enabled": "off", "cusum.k": "0.5", "cusum.h": "5"},
            headers=PANEL,
        )
        assert r.status_code == 200
        assert "Saved: the engine applies the settings" in r.text
        assert json.loads(r.headers["hx-trigger"])["toast"]["message"].startswith("Saved: the engine")
        assert '<span class="badge collecting">pending</span>' in r.text
        assert 'hx-trigger="every 2s"' in r.text
        assert '<option value="off" selected>off</option>' in r.text
        assert 'value="0.5"' in r.text
        ov = (await api.client.get("/api/spc/config/ollama/llama3.1:8b")).json()["overrides"]
        assert ov["rules"] == {"r2": {"enabled": False}}
        assert ov["updated_by"] == "ann"

        await feed(api, js, events[BASELINE_N + 2 :])

        async def applied() -> bool:
            r = await client.get(
                f"/charts/settings?{Q}&chart_key={record.key}", headers={**HX, "HX-Target": "settings-status"}
            )
            return '<span class="badge armed">applied</span>' in r.text

        await eventually(applied)
        r = await client.get(
            f"/charts/settings?{Q}&chart_key={record.key}", headers={**HX, "HX-Target": "settings-status"}
        )
        assert r.text.lstrip().startswith('<div id="settings-status"')
        assert "about one per 9" in r.text  # k=0.5, h=5, one-sided (only slowdowns page): about 930 probes

        r = await client.post("/charts/settings", data={**form, "action": "reset"})
        assert r.status_code == 200
        assert "Overrides removed" in r.text
        kv = await js.key_value(subjects.SPC_CONFIG_BUCKET)
        assert await keys(kv) == []

    client.cookies.clear()
    r = await client.get(f"/charts/settings?{Q}")
    assert r.status_code == 303


async def keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []
