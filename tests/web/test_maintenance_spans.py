"""Maintenance windows expanded into spans on a chart's time axis, and drawn on the comparison."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from llmscope.web.alerting import SilenceInfo
from llmscope.web.data import ChartPoint
from llmscope.web.maintenance_spans import maintenance_spans
from llmscope.web.trend_svg import render_comparison
from llmscope.web.trends import ChartEvent, ComparedLine, Comparison, MaintenanceSpan

MODELS = [("ollama", "llama3.1:8b")]
# 2026-06-01 is a Monday; June has 30 days.
START = datetime(2026, 6, 1, tzinfo=UTC)
END = START + timedelta(days=30)


def window(**fields: Any) -> SilenceInfo:
    base: dict[str, Any] = {
        "id": "s1",
        "kind": "maintenance",
        "reason": "backups",
        "author": "ops",
        "models": [],
        "providers": [],
        "rules": [],
        "hosts": [],
        "starts_at": None,
        "ends_at": None,
        "weekly_days": [],
        "weekly_start": None,
        "weekly_end": None,
        "timezone": "UTC",
        "created_at": None,
        "expired_at": None,
        "active": False,
    }
    return SilenceInfo(**{**base, **fields})


async def test_one_off_window_is_clipped_to_the_chart() -> None:
    w = window(starts_at=START - timedelta(hours=1), ends_at=START + timedelta(hours=2), models=["llama3*"])
    assert await maintenance_spans([w], MODELS, START, END) == [
        MaintenanceSpan(START, START + timedelta(hours=2), "backups (model=llama3*)")
    ]


async def test_silences_and_other_models_windows_are_not_drawn() -> None:
    silence = window(kind="silence", ends_at=END)
    other = window(ends_at=END, models=["qwen*"])
    assert await maintenance_spans([silence, other], MODELS, START, END) == []


async def test_a_host_scoped_window_only_where_a_matched_model_ran_on_that_host() -> None:
    asked: list[tuple[list[tuple[str, str]], datetime, datetime]] = []

    async def hosts_of(models: list[tuple[str, str]], a: datetime, b: datetime) -> set[str]:
        asked.append((models, a, b))
        return {"gpu-1"}

    models = [*MODELS, ("ollama", "qwen2:7b")]
    on_gpu1 = window(ends_at=END, models=["llama3*"], hosts=["gpu-?"], reason="one")
    on_gpu2 = window(ends_at=END, hosts=["gpu-2"], reason="two")
    spans = await maintenance_spans([on_gpu1, on_gpu2], models, START, END, hosts_of)
    assert [s.label for s in spans] == ["one (model=llama3* host=gpu-?)"]
    # Only the models the window's patterns match are asked about, over the occurrence.
    assert asked == [(MODELS, START, END), (models, START, END)]
    # Nobody to ask: a host-scoped window is drawn nowhere rather than on every model.
    assert await maintenance_spans([on_gpu1], models, START, END) == []


async def test_weekly_window_across_midnight_in_its_time_zone() -> None:
    w = window(weekly_days=["sat"], weekly_start="22:00", weekly_end="02:00", timezone="Europe/Berlin")
    spans = await maintenance_spans([w], MODELS, START, END)
    berlin = ZoneInfo("Europe/Berlin")
    # The Saturdays of June 2026: the 6th, 13th, 20th and 27th; each window ends on Sunday.
    assert [s.start.astimezone(berlin).day for s in spans] == [6, 13, 20, 27]
    assert all(s.end - s.start == timedelta(hours=4) for s in spans)
    assert spans[0].start == datetime(2026, 6, 6, 20, tzinfo=UTC)  # 22:00 CEST


async def test_monthly_last_friday_and_an_early_expiry() -> None:
    w = window(monthly_weekdays=["last fri"], monthly_start="01:00", monthly_end="03:00")
    (span,) = await maintenance_spans([w], MODELS, START, END)
    assert span.start == datetime(2026, 6, 26, 1, tzinfo=UTC)
    expired = window(
        weekly_days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        weekly_start="00:00",
        weekly_end="01:00",
        expired_at=START + timedelta(days=2, minutes=30),
    )
    # Days 1, 2 and half of day 3's hour: ended early by someone, drawn as it really ran.
    spans = await maintenance_spans([expired], MODELS, START, END)
    assert [s.end - s.start for s in spans] == [timedelta(hours=1)] * 2 + [timedelta(minutes=30)]


def test_comparison_svg_draws_bands_and_rebaselines() -> None:
    t = START + timedelta(hours=1)
    cmp = Comparison(
        metric="latency_ms",
        hours=6,
        start=START,
        end=START + timedelta(hours=6),
        bucket_s=120,
        lines=[
            ComparedLine(
                "ollama",
                "llama3.1:8b",
                [ChartPoint(ts=t, value=100.0), ChartPoint(ts=t + timedelta(minutes=2), value=120.0)],
            )
        ],
        events=[
            ChartEvent(
                ts=t,
                kind="rebaseline",
                provider="ollama",
                model="llama3.1:8b",
                label="re-baseline #1 by ann: new GPU",
            )
        ],
        maintenance=[
            MaintenanceSpan(START + timedelta(hours=2), START + timedelta(hours=3), "backups (everything)")
        ],
    )
    svg = str(render_comparison(cmp))
    assert svg.count('class="maintenance-band"') == 1
    assert "backups (everything)" in svg
    assert svg.count('class="rebaseline-line"') == 1
    assert "re-baseline #1 by ann: new GPU" in svg
    assert "/violations/" not in svg  # a re-baseline is no violation link
