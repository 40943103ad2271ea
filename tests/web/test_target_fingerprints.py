"""Two stored targets told apart only by their secrets (two keys of one gateway, two passwords)
print apart: each hidden value has a short fingerprint of itself, never the secret, so the
dashboard's links and forms, which carry the target as printed, reach the target they name
rather than the first that prints alike (``userinfo``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from llmscope.api.persister import store_telemetry
from llmscope.proto.charts import chart_key
from llmscope.web.userinfo import (
    HIDDEN,
    hidden,
    printed_chart_key,
    stored_chart_key,
    stored_target,
    without_password,
)
from tests.api.conftest import Api
from tests.api.factories import telemetry
from tests.web.test_pages import login

PAIRS = [
    ("https://bot:first-pw@gw.example/v1", "https://bot:second-pw@gw.example/v1"),
    ("https://tok-first@gw.example/v1", "https://tok-second@gw.example/v1"),
    ("https://gw.example/v1?api-key=first&x=1", "https://gw.example/v1?api-key=second&x=1"),
    ("https://gw.example/v1?next=/x?token=first", "https://gw.example/v1?next=/x?token=second"),
    (
        "https://gw.example/v1?r=https%3A%2F%2Fu%3Afirst%40h",
        "https://gw.example/v1?r=https%3A%2F%2Fu%3Asecond%40h",
    ),
]


@pytest.mark.parametrize(("first", "second"), PAIRS)
def test_targets_that_differ_in_their_secret_print_apart_and_map_back(first: str, second: str) -> None:
    stored = [first, second]
    printed = [without_password(t) for t in stored]
    assert printed[0] != printed[1]
    for target, shown in zip(stored, printed, strict=True):
        assert "first" not in shown
        assert "second" not in shown
        assert stored_target(shown, stored) == target
        key = chart_key("ollama", "m", target, "simple-1", "latency_ms")
        assert stored_chart_key(printed_chart_key(key), stored) == key
    # A link printed before fingerprints ("•••" alone) still reaches the first that prints so.
    legacy = re.sub(f"(?<={HIDDEN})[0-9a-f]{{4}}", "", printed[1])
    assert HIDDEN in legacy
    assert stored_target(legacy, stored) == first


def test_the_fingerprint_is_stable_short_and_not_the_secret() -> None:
    # Pinned: a bookmark or a screenshot of one release names the same target in the next.
    assert hidden("s3cret") == "•••9f3b"
    assert hidden("s3cret") != hidden("s3cret2")
    assert hidden(hidden("s3cret")) == hidden("s3cret")  # printed: as it is
    assert hidden(HIDDEN) == HIDDEN
    assert without_password("https://u:s3cret@h/v1") == "https://u:•••9f3b@h/v1"
    assert without_password("https://h/v1?key=s3cret") == "https://h/v1?key=•••9f3b"


async def test_the_dashboard_charts_the_target_its_link_names(api: Api) -> None:
    first, second = PAIRS[2]
    now = datetime.now(UTC)
    probes = [
        telemetry(i, id=f"{n}-{i}", target=t, host=f"gpu-{n}", ts=now - timedelta(minutes=2 * (30 - i)))
        for n, t in enumerate((first, second))
        for i in range(30)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, probes)
    client = await login(api)
    asked = {"provider": "ollama", "model": "llama3.1:8b", "prompt_id": "simple-1", "hours": "24"}
    for target in (first, second):
        shown = without_password(target)
        other = without_password(second if target == first else first)
        page = (await client.get("/dashboard", params={**asked, "target": shown})).text
        html = shown.replace("&", "&amp;")
        assert f'<option value="{html}" selected>' in page
        assert f'<option value="{other.replace("&", "&amp;")}" >' in page
        assert f"target {html}" in page
