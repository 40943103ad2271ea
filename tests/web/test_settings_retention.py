"""The settings page's retention rows: the hourly and the minute rollups each under its own name
and variable (LLMSCOPE_RETENTION_ROLLUP_DAYS was labelled "Per-minute rollups", and the minutes'
own LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS was not shown)."""

from __future__ import annotations

import dataclasses
import re

from llmscope.api.settings import ApiSettings
from tests.api.conftest import serve
from tests.web.test_pages import login


async def _retention_rows(settings: ApiSettings) -> dict[str, tuple[str, str]]:
    """Label -> (value, variable) of the Retention card."""
    async with serve(settings) as api:
        client = await login(api)
        r = await client.get("/settings")
        assert r.status_code == 200
    card = r.text[r.text.index(">Retention</h2>") :]
    card = card[: card.index("</dl>")]
    return {
        label: (value, env)
        for label, value, env in re.findall(
            r'<dt>([^<]+)</dt>\s*<dd><b>([^<]+)</b> <code class="env">([A-Z_]+)</code>', card
        )
    }


async def test_hourly_and_minute_rollups_are_each_labelled_with_their_own_variable(
    settings: ApiSettings,
) -> None:
    rows = await _retention_rows(
        dataclasses.replace(settings, retention_rollup_days=400, retention_minute_rollup_days=14)
    )
    assert rows["Hourly rollups"] == ("400 days", "LLMSCOPE_RETENTION_ROLLUP_DAYS")
    assert rows["Minute rollups"] == ("14 days", "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS")
    assert rows["Raw probes"] == ("30 days", "LLMSCOPE_RETENTION_TELEMETRY_DAYS")
    assert "Per-minute rollups" not in rows


async def test_minute_rollups_not_set_are_kept_as_long_as_the_hourly_ones(settings: ApiSettings) -> None:
    rows = await _retention_rows(dataclasses.replace(settings, retention_rollup_days=0))
    assert rows["Hourly rollups"] == ("forever", "LLMSCOPE_RETENTION_ROLLUP_DAYS")
    assert rows["Minute rollups"] == (
        "forever (not set: as the hourly rollups)",
        "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS",
    )
    rows = await _retention_rows(settings)
    assert rows["Minute rollups"][0] == "400 days (not set: as the hourly rollups)"
