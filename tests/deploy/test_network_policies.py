"""The network policies let through exactly the flows of the README's architecture, and nothing else.

The dev overlay (every workload, bundled NATS and PostgreSQL, the simulator) is rendered and its
NetworkPolicies are evaluated as Kubernetes does for ingress: a pod selected by no policy takes
anything; a selected pod takes a connection that some selecting policy's rule allows (every peer
field of one `from` entry must match; a named port is the target container's port of that name).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "deploy" / "k8s" / "overlays" / "dev"
NAMESPACE = "llmscope"


@dataclass(frozen=True)
class Pod:
    """A pod template's labels and named ports, in a namespace."""

    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        match operator:
            case "In":
                ok = labels.get(key) in values
            case "NotIn":
                ok = labels.get(key) not in values
            case "Exists":
                ok = key in labels
            case "DoesNotExist":
                ok = key not in labels
            case _:
                raise AssertionError(f"unknown operator {operator}")
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], source: Pod) -> bool:
    assert "ipBlock" not in peer, "this evaluator does not model ipBlock"
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": source.namespace}
        if not _selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif source.namespace != NAMESPACE:
        return False  # a bare podSelector means the policy's own namespace
    return "podSelector" not in peer or _selects(peer["podSelector"], source.labels)


def _port_matches(rule_port: dict[str, Any], target: Pod, port: int) -> bool:
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    return (target.ports.get(wanted) if isinstance(wanted, str) else wanted) == port


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    here = [p for p in policies if p["metadata"]["namespace"] == target.namespace]
    selecting = [p for p in here if _selects(p["spec"]["podSelector"], target.labels)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if peers is not None and not any(_peer_matches(peer, source) for peer in peers):
                continue
            ports = rule.get("ports")
            if ports is None or any(_port_matches(p, target, port) for p in ports):
                return True
    return False


@pytest.fixture(scope="module")
def rendered() -> tuple[list[dict[str, Any]], dict[str, Pod]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/system-packages installs a pinned one from PyPI)")
    done = subprocess.run([kubectl, "kustomize", str(DEV)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    pods = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            template = doc["spec"]["template"]
            containers = template["spec"]["containers"]
            ports = {p["name"]: p["containerPort"] for c in containers for p in c["ports"]}
            labels = template["metadata"]["labels"]
            pods[doc["metadata"]["name"]] = Pod(doc["metadata"]["namespace"], labels, ports)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    return policies, pods


# Who connects to what (README: Architecture); the metrics ports are scraped from `monitoring`.
FLOWS = {
    ("api", "nats", 4222),
    ("prober", "nats", 4222),
    ("spc-engine", "nats", 4222),
    ("alerter", "nats", 4222),
    ("api", "postgres", 5432),
    ("alerter", "postgres", 5432),
    ("prober", "sim", 11500),
}
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, {})
ELSEWHERE = Pod("default", {"app.kubernetes.io/name": "api", "app.kubernetes.io/part-of": "llmscope"}, {})
USER = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, {})


def test_every_flow_of_the_architecture_is_allowed_and_no_other_between_pods(
    rendered: tuple[list[dict[str, Any]], dict[str, Pod]],
) -> None:
    policies, pods = rendered
    assert {"api", "prober", "spc-engine", "alerter", "sim", "nats", "postgres"} <= pods.keys()
    for source_name, source in pods.items():
        for target_name, target in pods.items():
            for port in target.ports.values():
                to_api = target_name == "api" and port == 8000  # the API and dashboard: anyone
                expected = (source_name, target_name, port) in FLOWS or to_api
                got = allowed(policies, source, target, port)
                assert got == expected, f"{source_name} -> {target_name}:{port}: allowed={got}"


def test_only_monitoring_scrapes_metrics_and_anyone_reaches_the_api(
    rendered: tuple[list[dict[str, Any]], dict[str, Pod]],
) -> None:
    policies, pods = rendered
    for name in ("api", "prober", "spc-engine", "alerter"):
        target = pods[name]
        assert allowed(policies, PROMETHEUS, target, target.ports["http"]), name
        assert allowed(policies, ELSEWHERE, target, target.ports["http"]) == (name == "api"), name
    assert allowed(policies, USER, pods["api"], 8000)
    for name in ("nats", "postgres", "sim"):
        for port in pods[name].ports.values():
            assert not allowed(policies, USER, pods[name], port), (name, port)
            # A pod labelled like ours in another namespace is not ours.
            assert not allowed(policies, ELSEWHERE, pods[name], port), (name, port)
