"""One definition of real traffic: ``source`` and the ``traffic:`` prompt always agree, and every
query tells traffic from probes by the one SQL condition of ``llmscope.proto.telemetry``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from llmscope.proto.telemetry import PROBES_SQL, TRAFFIC_SQL, TelemetryEvent, is_traffic_prompt

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "type": "telemetry.v1",
    "id": "e1",
    "ts": "2026-01-01T00:00:00Z",
    "provider": "openai",
    "model": "m",
    "target": "t",
    "prompt_hash": "",
    "latency_ms": 10.0,
}


@pytest.mark.parametrize(
    ("source", "prompt_id"), [("traffic", "traffic:chat"), ("probe", "simple-1"), ("probe", "traffic-ish")]
)
def test_source_and_prompt_that_agree_are_accepted(source: str, prompt_id: str) -> None:
    ev = msgspec.json.decode(
        msgspec.json.encode({**BASE, "source": source, "prompt_id": prompt_id}), type=TelemetryEvent
    )
    assert (ev.source == "traffic") is is_traffic_prompt(ev.prompt_id)


@pytest.mark.parametrize(("source", "prompt_id"), [("traffic", "chat"), ("probe", "traffic:chat")])
def test_source_and_prompt_that_disagree_are_refused_naming_both(source: str, prompt_id: str) -> None:
    # The persister reads ``source``, the status and overview queries ``prompt_id``: an event
    # on which they disagree would be a probe to one and traffic to the other.
    with pytest.raises(msgspec.ValidationError, match=r"^`prompt_id` .* with source "):
        msgspec.json.decode(
            msgspec.json.encode({**BASE, "source": source, "prompt_id": prompt_id}), type=TelemetryEvent
        )


def test_the_sql_conditions_are_the_prefix() -> None:
    assert TRAFFIC_SQL == "prompt_id LIKE 'traffic:%'"
    assert PROBES_SQL == "prompt_id NOT LIKE 'traffic:%'"


def test_no_query_spells_the_traffic_condition_itself() -> None:
    # Migrations are frozen history; every live query uses PROBES_SQL / TRAFFIC_SQL.
    spelled = re.compile(r"LIKE\s+'traffic:")
    offenders = [
        str(p.relative_to(ROOT))
        for top in ("services", "proto")
        for p in (ROOT / top).rglob("*.py")
        if "migrations" not in p.parts and spelled.search(p.read_text())
    ]
    assert offenders == []


def test_no_service_spells_the_traffic_prompt_prefix_itself() -> None:
    # The OTLP receiver stores traffic under the prompt the engine charts it by: both build it
    # with traffic_prompt_id, so the prefix lives in one place.
    spelled = re.compile(r"""["']traffic:""")
    offenders = [
        str(p.relative_to(ROOT))
        for top in ("services", "proto")
        for p in (ROOT / top).rglob("*.py")
        if "migrations" not in p.parts and p.name != "telemetry.py" and spelled.search(p.read_text())
    ]
    assert offenders == []
