"""The status rules as a pure function: each condition, and which one wins."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llmscope.proto.charts import AvailabilityView
from llmscope.web.status import (
    MaintenanceWindow,
    ModelStatus,
    OpenViolations,
    Overall,
    PublicStatusReport,
    StatusInputs,
    StatusPolicy,
    StatusReport,
    TargetSignals,
    covering_window,
    model_status,
    overall,
    overall_status,
    public_view,
    status_report,
)

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
RECENT = NOW - timedelta(seconds=5)


def target(name: str = "local", **fields: Any) -> TargetSignals:
    values: dict[str, Any] = {"probes": 100, "ok": 100, "failure_run": 0, "last_probe": RECENT}
    values.update(fields)
    return TargetSignals(target=name, **values)


def opened(severity: str, rule: str = "R1", target: str = "local", minutes: int = 10) -> OpenViolations:
    return OpenViolations(target, rule, severity, 1, NOW - timedelta(minutes=minutes))


def view(**fields: Any) -> AvailabilityView:
    values: dict[str, Any] = {"phase": "armed", "progress": 200, "baseline_n": 200, "fail_run": 3}
    values.update(fields)
    return AvailabilityView(**values)


def status_of(*targets: TargetSignals, violations: tuple[OpenViolations, ...] = ()) -> ModelStatus:
    inputs = StatusInputs("ollama", "llama3.1:8b", NOW - timedelta(days=1), targets, violations)
    return model_status(inputs, NOW)


def test_healthy_target_is_operational() -> None:
    got = status_of(target())
    assert (got.status, got.since, got.reasons, got.last_probe) == ("operational", None, [], RECENT)


def test_info_and_warning_violations_change_nothing() -> None:
    noise = (opened("info", "R5"), opened("warning", "R1"), opened("warning", "EWMA"))
    assert status_of(target(), violations=noise).status == "operational"


def test_open_critical_latency_violation_is_degraded_since_it_opened() -> None:
    got = status_of(
        target(), violations=(opened("critical", "CUSUM", minutes=7), opened("critical", minutes=3))
    )
    assert got.status == "degraded"
    assert got.since == NOW - timedelta(minutes=7)
    assert got.reasons == ["1 open critical CUSUM violation", "1 open critical R1 violation"]
    # ERROR_RATE is a warning by default, and still an availability signal.
    assert status_of(target(), violations=(opened("warning", "ERROR_RATE"),)).status == "degraded"


def test_low_success_ratio_is_degraded_from_enough_probes_only() -> None:
    assert status_of(target(probes=100, ok=94)).status == "degraded"
    assert status_of(target(probes=100, ok=95)).status == "operational"
    # One failure among few probes is no verdict (the failure run rule covers outages).
    assert status_of(target(probes=10, ok=5, failure_run=0)).status == "operational"


def test_error_rate_episode_is_degraded_whatever_its_severity() -> None:
    assert status_of(target(availability=view(open_episodes=("ERROR_RATE",)))).status == "degraded"
    got = status_of(target(), violations=(opened("info", "ERROR_RATE"),))
    assert (got.status, got.reasons) == ("degraded", ["1 open info ERROR_RATE violation"])


def test_failure_run_at_the_alarm_length_is_an_outage_since_its_first_failure() -> None:
    start = NOW - timedelta(seconds=6)
    got = status_of(target(failure_run=3, run_since=start))
    assert (got.status, got.since, got.reasons) == ("outage", start, ["3 failed probes in a row on local"])
    assert status_of(target(failure_run=2)).status == "operational"


def test_the_engines_alarm_length_overrides_the_default() -> None:
    # A flaky endpoint's chart alarms at 5 in a row: 4 is not yet an outage.
    assert status_of(target(failure_run=4, availability=view(fail_run=5))).status == "operational"
    assert status_of(target(failure_run=5, availability=view(fail_run=5))).status == "outage"


def test_open_availability_episode_or_violation_is_an_outage_a_slow_model_is_degraded() -> None:
    assert status_of(target(availability=view(open_episodes=("AVAILABILITY",)))).status == "outage"
    got = status_of(target(), violations=(opened("critical", "AVAILABILITY"),))
    assert (got.status, got.since) == ("outage", NOW - timedelta(minutes=10))
    # A critical latency shift: the model answers, only slower.
    got = status_of(target(), violations=(opened("critical", "CUSUM"),))
    assert (got.status, got.reasons) == ("degraded", ["1 open critical CUSUM violation"])


def test_outage_wins_over_degraded() -> None:
    got = status_of(
        target(probes=100, ok=50),
        violations=(opened("warning", minutes=60), opened("critical", "AVAILABILITY", minutes=2)),
    )
    assert got.status == "outage"
    assert got.since == NOW - timedelta(minutes=2)  # since the outage, not the older warning
    assert got.reasons == ["1 open critical AVAILABILITY violation"]


def test_no_recent_probe_is_stopped_whatever_the_violations_and_never_probed_unknown() -> None:
    old = NOW - timedelta(minutes=16)
    got = status_of(target(last_probe=old, failure_run=9), violations=(opened("critical"),))
    assert (got.status, got.since, got.last_probe) == ("stopped", old, old)
    assert got.label == "stopped reporting"
    assert got.reasons == ["local stopped reporting: no probe since 11:44:00 UTC"]
    never = model_status(StatusInputs("ollama", "new:1"), NOW)
    assert (never.status, never.since, never.last_probe) == ("unknown", None, None)
    assert never.label == "unknown"
    assert never.reasons == ["no probe yet"]
    gone = model_status(StatusInputs("ollama", "gone:1", last_seen=NOW - timedelta(days=2)), NOW)
    assert (gone.status, gone.since) == ("stopped", NOW - timedelta(days=2))
    assert gone.reasons == ["stopped reporting: no probe since 2025-04-29 12:00 UTC"]


def test_a_target_that_stopped_reporting_is_stopped_within_minutes_not_the_window() -> None:
    # Probed every 2 s until 2 minutes ago (removed from the prober's targets): the window of
    # 15 min used to keep it "operational" until then.
    gone = NOW - timedelta(minutes=2)
    got = status_of(target(last_probe=gone, spacing_s=2.0))
    assert (got.status, got.since, got.last_probe) == ("stopped", gone, gone)
    assert got.reasons == ["local stopped reporting: no probe since 11:58:00 UTC"]
    # Ten of its intervals, at least a minute: 59 s of silence at 2 s a probe is a restart.
    assert status_of(target(last_probe=NOW - timedelta(seconds=59), spacing_s=2.0)).status == "operational"
    # A target probed every 30 s is late after 5 min; its pace unknown, after the window.
    assert status_of(target(last_probe=NOW - timedelta(minutes=4), spacing_s=30.0)).status == "operational"
    assert status_of(target(last_probe=NOW - timedelta(minutes=6), spacing_s=30.0)).status == "stopped"
    assert status_of(target(last_probe=NOW - timedelta(minutes=14), spacing_s=None)).status == "operational"
    # An endpoint that hangs until each probe's 120 s timeout (probes are stamped at their start)
    # is failing, not silent: twice the longest gap of its window.
    hung = target(last_probe=NOW - timedelta(seconds=125), spacing_s=4.0, max_gap_s=122.0)
    assert status_of(hung).status == "operational"


def test_a_stopped_target_is_named_while_the_models_other_targets_decide() -> None:
    gone = target("old-gpu", last_probe=NOW - timedelta(minutes=3), spacing_s=2.0, failure_run=9)
    got = status_of(
        target("new-gpu", spacing_s=2.0), gone, violations=(opened("critical", target="old-gpu"),)
    )
    assert got.status == "operational"
    assert got.reasons == ["old-gpu stopped reporting: no probe since 11:57:00 UTC"]
    both = status_of(target("new-gpu", failure_run=3), gone)
    assert both.status == "outage"
    assert both.reasons == [
        "3 failed probes in a row on new-gpu",
        "old-gpu stopped reporting: no probe since 11:57:00 UTC",
    ]


def test_a_stale_targets_violations_are_ignored_while_another_target_is_live() -> None:
    stale = target("old", last_probe=NOW - timedelta(hours=2), failure_run=50)
    got = status_of(target("live"), stale, violations=(opened("critical", target="old"),))
    assert got.status == "operational"
    assert got.reasons == ["old stopped reporting: no probe since 10:00:00 UTC"]
    # A violation without a target belongs to the whole model.
    model_wide = (opened("critical", "AVAILABILITY", target=""),)
    assert status_of(target("live"), stale, violations=model_wide).status == "outage"


def test_the_worst_live_target_decides() -> None:
    got = status_of(target("a"), target("b", failure_run=3))
    assert (got.status, got.reasons) == ("outage", ["3 failed probes in a row on b"])


def test_policy_thresholds_are_the_policys() -> None:
    strict = StatusPolicy(window_s=60, min_success_ratio=0.999, min_probes=5, alarm_run=2)
    inputs = StatusInputs("p", "m", targets=(target(probes=1000, ok=998),))
    assert model_status(inputs, NOW, strict).status == "degraded"
    inputs = StatusInputs("p", "m", targets=(target(failure_run=2),))
    assert model_status(inputs, NOW, strict).status == "outage"
    inputs = StatusInputs("p", "m", targets=(target(last_probe=NOW - timedelta(seconds=61)),))
    assert model_status(inputs, NOW, strict).status == "stopped"


@pytest.mark.parametrize(
    ("statuses", "status", "label"),
    [
        ((), "unknown", "nothing monitored yet"),
        (("operational", "operational"), "operational", "all operational"),
        # A partial stop reads as partial: never as if every model had stopped.
        (("operational",) * 4 + ("stopped",), "degraded", "1 of 5 stopped reporting"),
        # A model not probed yet (just added) is named, and makes nothing worse.
        (("operational", "unknown"), "operational", "all probed operational · 1 never probed"),
        (("maintenance", "unknown"), "maintenance", "1 of 2 in maintenance · 1 never probed"),
        (("stopped", "unknown", "operational"), "degraded", "1 of 3 stopped reporting · 1 never probed"),
        (("stopped", "maintenance"), "degraded", "1 of 2 stopped reporting"),
        # Only when every model is silent is the whole silent.
        (("stopped", "stopped"), "stopped", "all stopped reporting"),
        (("unknown",), "unknown", "no probe yet"),
        (("stopped", "unknown"), "stopped", "1 of 2 stopped reporting · 1 never probed"),
        # The worst health wins, and the silent ones are still named.
        (("unknown", "degraded"), "degraded", "1 of 2 degraded · 1 never probed"),
        (("degraded", "outage", "stopped"), "outage", "1 of 3 down · 1 stopped reporting"),
        (("outage", "outage"), "outage", "all down"),
        (("degraded",), "degraded", "all degraded"),
        (("maintenance", "operational"), "maintenance", "1 of 2 in maintenance"),
        (("maintenance", "degraded"), "degraded", "1 of 2 degraded"),
        (("maintenance",), "maintenance", "all in maintenance"),
    ],
)
def test_overall_worst_health_wins_and_a_partial_stop_is_partial(
    statuses: tuple[str, ...], status: str, label: str
) -> None:
    models = [ModelStatus("p", f"m{i}", s) for i, s in enumerate(statuses)]  # type: ignore[arg-type]
    assert overall(models) == Overall(status, label)  # type: ignore[arg-type]
    assert overall_status(models) == status
    report = StatusReport(status=overall_status(models), generated_at=NOW, models=models)
    assert report.label == public_view(report).label == label


def test_report_is_sorted_and_its_public_view_has_names_and_statuses_only() -> None:
    inputs = [
        StatusInputs("openai", "org/gpt:1", targets=(target("ext"),), uptime_24h=0.5),
        StatusInputs("ollama", "llama3.1:8b", targets=(target(failure_run=3),)),
    ]
    report = status_report(inputs, NOW)
    assert [(m.provider, m.model, m.status) for m in report.models] == [
        ("ollama", "llama3.1:8b", "outage"),
        ("openai", "org/gpt:1", "operational"),
    ]
    assert (report.status, report.generated_at) == ("outage", NOW)
    assert report.find("openai", "org/gpt:1") is report.models[1]
    assert report.find("openai", "nope") is None
    public = public_view(report)
    assert public.status == "outage"
    assert [dataclasses.astuple(m) for m in public.models] == [
        ("ollama", "llama3.1:8b", "outage"),
        ("openai", "org/gpt:1", "operational"),
    ]
    assert [f.name for f in dataclasses.fields(PublicStatusReport)] == ["status", "models"]


def test_a_maintenance_window_covers_a_model_by_provider_model_and_host() -> None:
    patches = MaintenanceWindow("OS patches", models=("llama*",))
    gpu1 = MaintenanceWindow("GPU swap", hosts=("gpu-1",))
    only_latency = MaintenanceWindow("load test", models=("llama*",), rules=("CUSUM",))
    other_provider = MaintenanceWindow("openai incident", providers=("openai",))
    windows = [only_latency, other_provider, patches, gpu1]
    assert covering_window(windows, "ollama", "llama3.1:8b", ["gpu-9"]) is patches
    assert covering_window(windows, "ollama", "qwen2:7b", ["gpu-9", "gpu-1"]) is gpu1
    assert covering_window(windows, "ollama", "qwen2:7b", ["gpu-9"]) is None
    assert covering_window([only_latency], "ollama", "llama3.1:8b", []) is None  # some rules only
    assert covering_window(windows, "openai", "gpt-4o", []) is other_provider


def test_maintenance_wins_over_what_the_probes_say() -> None:
    window = MaintenanceWindow("OS patches")
    down = StatusInputs(
        "ollama",
        "llama3.1:8b",
        targets=(target(failure_run=9),),
        violations=(opened("critical", "AVAILABILITY"),),
        maintenance=window,
    )
    got = model_status(down, NOW)
    assert (got.status, got.reasons) == ("maintenance", ["maintenance: OS patches"])
    silent = StatusInputs("ollama", "new:1", maintenance=window)
    assert model_status(silent, NOW).status == "maintenance"
    assert public_view(status_report([down], NOW)).models[0].status == "maintenance"


def test_failures_below_the_alarm_length_are_named_though_the_status_holds() -> None:
    """Found by hand: an endpoint that hangs (each probe its whole 30 s timeout) read
    "operational" with its last answer's latency for a minute and a half, its first two
    timeouts nowhere on the overview or the status page."""
    got = status_of(target(failure_run=2))
    assert (got.status, got.reasons) == (
        "operational",
        ["2 failed probes in a row on local (an outage from 3)"],
    )
    got = status_of(target(failure_run=1, availability=view(fail_run=5)))
    assert got.reasons == ["1 failed probe in a row on local (an outage from 5)"]
    got = status_of(target(failure_run=1), violations=(opened("critical", "CUSUM"),))
    assert (got.status, got.reasons) == (
        "degraded",
        ["1 open critical CUSUM violation", "1 failed probe in a row on local (an outage from 3)"],
    )
    assert status_of(target(failure_run=0)).reasons == []


def test_a_failure_run_says_what_the_probes_answered() -> None:
    """An outage row read "327 failed probes in a row on openai/gpt-4o-mini" and nothing on the
    overview or the status page said whether the endpoint timed out, refused or was rate limited."""
    got = status_of(target(failure_run=3, run_kinds=("rate_limited",)))
    assert got.reasons == ["3 failed probes in a row on local: rate_limited"]
    got = status_of(target(failure_run=2, run_kinds=("timeout", "http_5xx")))
    assert got.reasons == ["2 failed probes in a row on local: http_5xx, timeout (an outage from 3)"]
