"""The health overview on the Models page: full page, window fragment, polled table, highlights."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.persister import store_telemetry
from llmscope.api.settings import ApiSettings
from llmscope.proto.charts import AVAILABILITY, AvailabilityView, ChartMeta, ChartRecord, chart_key
from tests.api.conftest import Api
from tests.api.engine import eventually
from tests.api.factories import telemetry
from tests.api.test_health_overview import OK_LATENCIES, STREAM_TTFT, pcts, seed
from tests.web.test_pages import HX, is_full_page, login

Cell = tuple[str, str]
"""A cell's classes and its text (tags left out)."""


def cells_of(row: str) -> list[Cell]:
    return [
        (cls or "", re.sub(r"<[^>]+>", "", inner).strip())
        for cls, inner in re.findall(r'<td(?: class="([^"]*)")?[^>]*>(.*?)</td>', row, re.S)
    ]


def row_of(html: str, *cells: str) -> tuple[str, list[Cell]]:
    """The health table row whose leading cells read ``cells`` (a target: its whole URL), as HTML
    and as its cells."""
    for match in re.finditer(r"<tr[^>]*>\s*<td.*?</tr>", html, re.S):
        row = cells_of(match.group(0))
        if [text for _, text in row[: len(cells)]] == list(cells):
            return match.group(0), row
    raise AssertionError(f"no row {cells}")


def bad(cell: Cell) -> bool:
    return "bad" in cell[0].split()


async def test_models_page_shows_health(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/models")
    assert r.status_code == 200
    assert is_full_page(r.text)
    assert 'id="models"' in r.text  # the models table stays below
    assert 'hx-trigger="sse:status delay:1s, live-resumed from:body, every 30s [!llmscopeLive]"' in r.text
    assert 'name="hours" value="1" checked' in r.text

    plain, cells = row_of(r.text, "ollama / llama3.1:8b", "local", "non-streaming")
    texts = [text for _, text in cells]
    assert 'class="failing"' in plain  # a run of 3 failures
    assert cells[4] == ("key nowrap bad", "95.24%")  # 100 of 105
    assert "http_<wbr>5xx 2 · timeout 3" in plain  # the kinds break after "_" in a narrow cell
    assert bad(cells[6])
    assert cells[6][1] == "3"
    for value in pcts(OK_LATENCIES):
        assert f"{value:,.1f}" in texts
    href = "/violations?series=" + quote("ollama|llama3.1:8b", safe="") + "&amp;state=open"
    assert f'<a href="{href}"' in plain
    # Its critical resolved by a person is still open (not cleared): it is the worst one.
    assert '<span class="sev critical">critical</span>' in plain

    stream, cells = row_of(r.text, "ollama / llama3.1:8b", "local", "streaming")
    assert 'class="failing"' not in stream
    assert bad(cells[4])
    assert cells[4][1] == "95.24%"  # 20 of 21
    assert not bad(cells[6])
    assert cells[6][1] == "0"
    for value in pcts(STREAM_TTFT):
        assert f"{value:,.1f}" in [text for _, text in cells]

    _, gpt = row_of(r.text, "openai / org/gpt:1", "ext", "non-streaming")
    assert not bad(gpt[4])
    assert gpt[4][1] == "100.00%"
    assert "critical" in gpt[-1][1]


async def test_models_health_window_and_fragments(api: Api) -> None:
    await seed(api)
    client = await login(api)
    r = await client.get("/models?hours=6", headers={**HX, "HX-Target": "health-panel"})
    assert r.status_code == 200
    assert not is_full_page(r.text)
    assert r.text.lstrip().startswith('<section id="health-panel"')
    assert 'name="hours" value="6" checked' in r.text
    assert "retired:1" in r.text  # probed 3.5 h ago
    assert 'id="models"' not in r.text

    r = await client.get("/models?hours=1", headers={**HX, "HX-Target": "health"})
    assert r.text.lstrip().startswith('<div id="health" hx-get="/models?hours=1"')
    assert "llama3.1:8b" in r.text
    # Not in the table any more, but named as an enabled model that went silent.
    assert not re.search(r"<td[^>]*>ollama / retired:1</td>", r.text)
    silent = re.search(r'<p class="bad silent">(.*?)</p>', r.text, re.S)
    assert silent, r.text
    assert "ollama / retired:1 (last probe" in silent.group(1)
    assert "llama3.1:8b" not in silent.group(1)

    r = await client.get("/models?hours=0")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "hours"]


async def test_models_health_empty_and_toggle_keeps_it(api: Api) -> None:
    client = await login(api)
    r = await client.get("/models?hours=24")
    assert "No probes in the last 24h." in r.text
    await seed(api)
    r = await client.post(
        "/models/toggle", data={"provider": "openai", "model": "org/gpt:1", "enabled": "false"}, headers=HX
    )
    assert r.status_code == 200
    assert json.loads(r.headers["hx-trigger"])["toast"] == {
        "message": "openai/org/gpt:1 disabled: no more probes.",
        "level": "ok",
    }
    assert 'id="health-panel"' in r.text  # no HX-Target: the whole content block
    assert '<tr class="disabled">' in r.text


async def test_a_traffic_only_model_says_so_instead_of_a_probing_switch(api: Api) -> None:
    """A model seen only in an application's traffic is not probed: the Enable/Disable switch
    (shown for it before) switched nothing; the row says what is true instead."""
    probe = telemetry(1, provider="openai", model="org/gpt:1", target="ext")
    span = telemetry(
        2, id="span-app", provider="openai", model="shop-bot", target="app-gateway",
        source="traffic", prompt_id="traffic:chat",
    )  # fmt: skip
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, [probe, span])
    page = (await (await login(api)).get("/models")).text
    rows = {
        m.group(1): m.group(0)
        for m in re.finditer(
            r'<tr[^>]*>\s*<td class="lead">openai</td><td class="lead">([^<]+)</td>.*?</tr>', page, re.S
        )
    }
    assert set(rows) == {"org/gpt:1", "shop-bot"}
    assert "traffic only — not probed" in rows["shop-bot"]
    assert "/models/toggle" not in rows["shop-bot"]
    assert ">Disable</button>" in rows["org/gpt:1"]
    assert "not probed" not in rows["org/gpt:1"]


async def test_the_open_rule_badges_of_an_availability_chart_are_apart(
    api: Api, settings: ApiSettings, nc: NATS
) -> None:
    # Two open rules (and a re-baselined chart's note before them) read as separate words, not
    # "AVAILABILITYERROR_RATE": the page is rendered with trim_blocks, so the gap must be explicit.
    await seed(api)
    key = chart_key("ollama", "llama3.1:8b", "local", "*", AVAILABILITY)
    meta = ChartMeta(
        provider="ollama", model="llama3.1:8b", target="local", prompt_id="*", metric=AVAILABILITY
    )
    view = AvailabilityView(
        phase="armed",
        progress=200,
        baseline_n=200,
        baseline_failure_rate=0.01,
        window=50,
        threshold=7,
        fail_run=3,
        failure_run=9,
        open_episodes=("AVAILABILITY", "ERROR_RATE"),
        baseline_number=1,
        baseline_by="ann",
    )
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, availability=view)))
    client = await login(api)
    for headers in ({}, {**HX, "HX-Target": "health"}):
        r = await client.get("/models", headers=headers)
        assert r.status_code == 200
        cells = re.findall(r'<td class="more availability"[^>]*>(.*?)</td>', r.text, re.S)
        charted = [c for c in cells if "rule-code" in c]
        assert charted, r.text
        for cell in charted:
            assert re.search(r"</a>\s+<a class=\"rule-code\"", cell), cell  # badge, gap, badge
            assert re.search(r"</span>\s+<a class=\"rule-code\"", cell), cell  # the note, gap, badge
            text = " ".join(re.sub(r"<[^>]+>", "", cell).split())
            assert text.endswith("· baseline #1 by ann AVAILABILITY ERROR_RATE"), text


async def test_overloaded_probes_are_their_own_kind_on_the_models_and_status_pages(
    persisting_api: Api,
) -> None:
    # Anthropic's 529 (``overloaded``), posted and stored through the persister as a prober's
    # would be, is counted apart from rate limits wherever failures are listed by kind.
    api = persisting_api
    now = datetime.now(UTC).replace(microsecond=0)
    base = {"provider": "anthropic", "model": "claude-3-5-haiku", "target": "anthropic-api"}
    body = [
        {**base, "prompt_id": "p1", "prompt_hash": "h", "ts": (now - timedelta(seconds=9 - i)).isoformat()}
        | (
            {"status": "rate_limited", "http_status": 429}
            if i == 0
            else {"status": "overloaded", "http_status": 529}
        )
        for i in range(4)
    ]
    r = await api.client.post("/api/stats", json=body)
    assert r.status_code == 202, r.text
    ids = r.json()["ids"]

    async def stored() -> bool:
        n = await api.store.pool.fetchval("SELECT count(*) FROM telemetry WHERE id = ANY($1)", ids)
        return bool(n == 4)

    await eventually(stored, what="the posted probes stored")
    client = await login(api)
    page = (await client.get("/models")).text
    row, _ = row_of(page, "anthropic / claude-3-5-haiku", "anthropic-api")
    assert "overloaded 3 · rate_<wbr>limited 1" in row
    status = (await client.get("/status")).text
    assert "4 failed probes in a row on anthropic-api: overloaded, rate_limited" in status, status
