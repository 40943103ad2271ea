"""The manifests' requests and limits are the ones derived from the checked-in measurement.

bench/resources_bench.py measures every service of a running stack and writes
deploy/k8s/resources.json (figures, the rule, and the requests and limits the rule gives). These
tests fail when the file's resources no longer follow from its figures by the bench's rule, or
when a container's resources in deploy/k8s differ from the file's: a change to either one alone
fails, and so does a container that was never measured.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MEASURED = json.loads((K8S / "resources.json").read_text())
# Where each measured service's container is defined (components/bundled has single-node NATS
# and PostgreSQL, the dev overlay the simulator, for trying the stack).
MANIFESTS = {
    "api": K8S / "base" / "api.yaml",
    "spc-engine": K8S / "base" / "spc-engine.yaml",
    "alerter": K8S / "base" / "alerter.yaml",
    "prober": K8S / "base" / "prober.yaml",
    "sim": K8S / "overlays" / "dev" / "sim.yaml",
    "nats": K8S / "components" / "bundled" / "nats.yaml",
    "postgres": K8S / "components" / "bundled" / "postgres.yaml",
}
# The base's services whose resources an overlay's values.yaml sets (components/values).
VALUE_KEYS = {"api": "api", "spc-engine": "spcEngine", "alerter": "alerter", "prober": "prober"}
OVERLAYS = ("dev", "example")


def _bench(name: str = "resources_bench") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up by name.
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _containers(path: Path) -> dict[str, dict[str, Any]]:
    containers: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                containers[container["name"]] = container
    return containers


def test_the_recorded_resources_follow_from_the_recorded_figures() -> None:
    bench = _bench()
    assert MEASURED["rule"] == bench.RULE
    assert MEASURED["resources"] == bench.derive(MEASURED["figures"])
    assert set(MEASURED["figures"]) == set(bench.LEVELS)


def test_the_rule_follows_the_figures() -> None:
    # The derivation is checked against figures, so a rule that ignores them cannot pass.
    bench = _bench()
    figures = json.loads(json.dumps(MEASURED["figures"]))
    before = bench.derive(figures)["api"]
    figures["typical"]["api"]["cpu_p95"] += 0.1
    figures["heavy"]["api"]["peak_mib"] += 1000
    after = bench.derive(figures)["api"]
    assert after["requests"]["cpu"] != before["requests"]["cpu"]
    assert after["limits"]["memory"] != before["limits"]["memory"]


@pytest.mark.parametrize("service", sorted(MANIFESTS))
def test_the_manifests_use_the_measured_resources(service: str) -> None:
    container = _containers(MANIFESTS[service])[service]
    assert container["resources"] == MEASURED["resources"][service], (
        f"{service}: the manifest and deploy/k8s/resources.json disagree; "
        "rerun `python bench/resources_bench.py --write` and copy its resources, or fix the manifest"
    )


def test_every_container_of_the_base_and_dev_overlay_was_measured() -> None:
    files = {
        *(K8S / "base").glob("*.yaml"),
        *(K8S / "overlays" / "dev").glob("*.yaml"),
        *(K8S / "components" / "bundled").glob("*.yaml"),
    }
    names = {name for path in files for name in _containers(path)}
    assert names == set(MANIFESTS) == set(MEASURED["resources"])


def _from_values(data: dict[str, str], service: str) -> dict[str, dict[str, str]]:
    key = VALUE_KEYS[service]
    return {
        "requests": {"cpu": data[f"{key}CpuRequest"], "memory": data[f"{key}MemoryRequest"]},
        "limits": {"memory": data[f"{key}MemoryLimit"]},
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_values_are_the_measured_resources(overlay: str) -> None:
    (values,) = [d for d in yaml.safe_load_all((K8S / "overlays" / overlay / "values.yaml").read_text()) if d]
    for service in VALUE_KEYS:
        assert _from_values(values["data"], service) == MEASURED["resources"][service], (overlay, service)


def _rendered(overlay: Path) -> dict[str, dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("rendering needs kubectl (.ci/system-packages installs it)")
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    containers: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc and doc.get("kind") in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                containers[container["name"]] = container
    return containers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_container_gets_the_measured_resources(overlay: str) -> None:
    rendered = _rendered(K8S / "overlays" / overlay)
    assert rendered
    for name, container in rendered.items():
        assert container["resources"] == MEASURED["resources"][name], (overlay, name)


def test_a_resource_value_reaches_its_container_and_no_other(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    values_path = tmp_path / "k8s" / "overlays" / "dev" / "values.yaml"
    values = yaml.safe_load(values_path.read_text())
    values["data"].update(spcEngineMemoryLimit="999Mi", proberCpuRequest="123m")
    values_path.write_text(yaml.safe_dump(values))
    rendered = _rendered(values_path.parent)
    assert rendered["spc-engine"]["resources"]["limits"]["memory"] == "999Mi"
    assert rendered["prober"]["resources"]["requests"]["cpu"] == "123m"
    for name in set(rendered) - {"spc-engine", "prober"}:
        assert rendered[name]["resources"] == MEASURED["resources"][name], name


def _millicores(quantity: str) -> float:
    return float(quantity[:-1]) if quantity.endswith("m") else float(quantity) * 1000


def test_the_api_autoscaler_leaves_the_measured_loads_alone() -> None:
    # A target relative to the request (the typical load's p95) would add pods at the typical
    # load itself; the target is an absolute CPU per pod, well above every measured level and
    # below the one core a pod's event loop can use.
    (hpa,) = [
        d
        for d in yaml.safe_load_all((K8S / "components" / "autoscaling" / "hpa.yaml").read_text())
        if d and d["kind"] == "HorizontalPodAutoscaler"
    ]
    ((metric,),) = [hpa["spec"]["metrics"]]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "AverageValue"
    target_m = _millicores(metric["resource"]["target"]["averageValue"])
    busiest_m = max(MEASURED["figures"][level]["api"]["cpu_max"] for level in MEASURED["figures"]) * 1000
    assert target_m >= 4 * busiest_m, (target_m, busiest_m)
    assert target_m >= 4 * _millicores(MEASURED["resources"]["api"]["requests"]["cpu"])
    assert target_m <= 500


# components/nats-cluster: sized by bench/nats_bench.py (three servers, streams replicated).
NATS_CLUSTER = K8S / "components" / "nats-cluster" / "nats.yaml"


def _nats_statefulset() -> dict[str, Any]:
    (sts,) = [d for d in yaml.safe_load_all(NATS_CLUSTER.read_text()) if d and d["kind"] == "StatefulSet"]
    return sts  # type: ignore[no-any-return]


def test_the_nats_cluster_record_follows_from_its_figures() -> None:
    bench = _bench("nats_bench")
    record = MEASURED["nats-cluster"]
    assert record["rule"] == bench.RULE
    derived = bench.derive(record["figures"])
    assert {key: record[key] for key in derived} == derived
    # Measured on the component's own topology: every stream and bucket on three servers.
    assert record["figures"]["servers"] == _nats_statefulset()["spec"]["replicas"] == 3
    assert {s["replicas"] for s in record["figures"]["streams"].values()} == {3}
    assert "LLMSCOPE_TELEMETRY" in record["figures"]["streams"]


def test_the_nats_rule_follows_the_figures() -> None:
    bench = _bench("nats_bench")
    figures = json.loads(json.dumps(MEASURED["nats-cluster"]["figures"]))
    before = bench.derive(figures)
    figures["streams"]["LLMSCOPE_TELEMETRY"]["bytes_per_s"] *= 10
    figures["streams"]["LLMSCOPE_VIOLATIONS"]["msgs_per_s"] += 50  # a day's de-duplication map
    figures["server"]["cpu_p95"] += 0.1
    after = bench.derive(figures)
    assert after["storage"] != before["storage"]
    assert after["resources"]["limits"]["memory"] != before["resources"]["limits"]["memory"]
    assert after["resources"]["requests"]["cpu"] != before["resources"]["requests"]["cpu"]


def test_the_nats_cluster_manifest_uses_the_measured_sizing() -> None:
    sts = _nats_statefulset()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    record = MEASURED["nats-cluster"]
    assert container["resources"] == record["resources"], (
        "components/nats-cluster and deploy/k8s/resources.json disagree; "
        "rerun `python bench/nats_bench.py --write` and copy its sizing, or fix the manifest"
    )
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == record["storage"]


def test_the_nats_cluster_caps_telemetry_below_its_volume() -> None:
    component = yaml.safe_load((K8S / "components" / "nats-cluster" / "kustomization.yaml").read_text())
    (patch,) = component["patches"]
    operations = {op["path"]: op["value"] for op in yaml.safe_load(patch["patch"])}
    cap = int(operations["/data/LLMSCOPE_TELEMETRY_MAX_BYTES"])
    record = MEASURED["nats-cluster"]
    assert cap == record["telemetry_max_bytes"]
    volume = int(record["storage"].removesuffix("Gi")) * 2**30
    assert 0 < cap < volume
