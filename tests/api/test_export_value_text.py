"""The violations CSV says an availability chart's count as the pages do: AVAILABILITY's a run of
failed probes, ERROR_RATE's failures in its window (its ``value`` column alone is a bare count)."""

from __future__ import annotations

import csv
import io

from llmscope.api.persister import store_violations
from llmscope.api.routes.export import VIOLATION_COLUMNS
from tests.api.conftest import Api
from tests.api.factories import telemetry, violation
from tests.web.engine_events import availability_violation, error_rate_violation
from tests.web.test_failure_counts import SCATTERED


async def test_the_csv_says_which_count_an_outage_value_is(api: Api) -> None:
    _, rate = await error_rate_violation([telemetry(i) for i in range(120)], SCATTERED, "v-rate")
    _, run = await availability_violation([telemetry(i) for i in range(60)], range(45, 50), "v-run")
    async with api.store.pool.acquire() as conn:
        await store_violations(conn, [rate, run])
    r = await api.client.get("/api/export/violations.csv")
    assert r.status_code == 200
    header, *_ = csv.reader(io.StringIO(r.text))
    # The stored columns first, in their order, for readers by position.
    assert header == [*VIOLATION_COLUMNS, "value_text"]
    rows = {row["id"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert (rows["v-rate"]["value"], rows["v-rate"]["value_text"]) == (
        "10.0",
        "10 failed probes in the last 50",
    )
    n = f"{run.value:.0f}"
    assert (rows["v-run"]["value"], rows["v-run"]["value_text"]) == (
        f"{run.value}",
        f"{n} failed probes in a row",
    )


async def test_other_metrics_value_text_has_its_unit(api: Api) -> None:
    slow = violation(telemetry(3), id="v-slow", value=1895.25)
    async with api.store.pool.acquire() as conn:
        await store_violations(conn, [slow])
    (row,) = csv.DictReader(io.StringIO((await api.client.get("/api/export/violations.csv")).text))
    assert (row["metric"], row["value"], row["value_text"]) == ("latency_ms", "1895.25", "1895.2 ms")
