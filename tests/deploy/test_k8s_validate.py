"""Every overlay, and the base with every combination of the optional components, renders with
`kubectl kustomize` and every object passes strict schema validation (kubernetes-validate: no
unknown field, every required one) for the oldest Kubernetes we support and the newest it knows.

The Prometheus Operator's kinds (PodMonitor, PrometheusRule) are custom resources that the
Kubernetes schemas do not hold; tests/deploy/test_monitoring.py checks what they carry.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The SPC engine needs 1.28 for its pod index label (README: Kubernetes).
VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
OPTIONAL = ("autoscaling", "ingress", "monitoring", "network-policies")
# Where NATS comes from: by URL (no component), bundled with PostgreSQL, or a 3-node cluster.
NATS_CHOICES: tuple[tuple[str, ...], ...] = ((), ("bundled",), ("nats-cluster",))
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/system-packages installs a pinned one from PyPI)")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{directory.name}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _invalid(docs: list[dict[str, Any]]) -> list[str]:
    """Why each object fails strict validation, for each version."""
    problems = []
    for version, doc in itertools.product(VERSIONS, docs):
        name = f"{doc['kind']}/{doc['metadata']['name']} ({version})"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS:
                problems.append(f"{name}: no schema for {doc['apiVersion']}")
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{name}: {exc.message} at {'.'.join(map(str, exc.path))}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_overlay_validates_strictly(overlay: Path) -> None:
    docs = _render(overlay)
    assert len(docs) > 10
    assert _invalid(docs) == []


def _overlay_with(tmp_path: Path, components: tuple[str, ...]) -> Path:
    """The example overlay's values with these components, as a user's short overlay would be."""
    overlay = tmp_path / "k8s" / "overlays" / "combination"
    overlay.mkdir(parents=True)
    shutil.copy(K8S / "overlays" / "example" / "values.yaml", overlay / "values.yaml")
    # values feeds every object first; autoscaling then removes the API's replicas (README).
    ordered = [c for c in components if c != "autoscaling"] + ["values"]
    ordered += ["autoscaling"] if "autoscaling" in components else []
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../base", "values.yaml"],
        "components": [f"../../components/{c}" for c in ordered],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


def test_every_combination_of_components_renders_and_validates(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    shutil.rmtree(tmp_path / "k8s" / "overlays")
    kinds_seen: set[str] = set()
    combinations = [
        nats + optional
        for nats in NATS_CHOICES
        for size in range(len(OPTIONAL) + 1)
        for optional in itertools.combinations(OPTIONAL, size)
    ]
    assert len(combinations) == 48
    for components in combinations:
        overlay = _overlay_with(tmp_path, components)
        docs = _render(overlay)
        assert _invalid(docs) == [], components
        kinds_seen |= {doc["kind"] for doc in docs}
        shutil.rmtree(overlay)
    # Every component contributed its objects in some combination.
    assert {"HorizontalPodAutoscaler", "Ingress", "PodMonitor", "NetworkPolicy", "StatefulSet"} <= kinds_seen


def test_strict_validation_refuses_an_unknown_field() -> None:
    docs = _render(K8S / "overlays" / "dev")
    (api,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "api"]
    api["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    assert [p for p in _invalid([api]) if "securityContxt" in p]


def test_the_example_overlay_with_the_persister_apart_validates(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "example"
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    spec["components"].insert(0, "../../components/persister-apart")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    docs = _render(overlay)
    assert "persister" in {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert _invalid(docs) == []
