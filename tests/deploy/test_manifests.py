"""docker-compose.yml and the kustomize manifests are valid and agree with the CLI and README.

There is no Docker engine or cluster here, so these checks are static: the compose file against
the Compose Specification schema, every kustomization's resources present, every container
command a real `llmscope` subcommand, and every LLMSCOPE_* variable they set documented. Where
kubectl is installed, every overlay is rendered (`kubectl kustomize`) and the rendered objects
are checked: Pod Security "restricted" on every container, probes, one value per setting.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmscope.api.settings import ApiSettings
from llmscope.config.env import ConfigError, Env
from llmscope.stack.cli import SERVICES

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
APART = "persister"
"""The one service no overlay runs by default (components/persister-apart)."""


def test_compose_file_matches_the_compose_specification() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_runs_every_service_with_real_commands() -> None:
    services = _compose()["services"]
    for name in ("nats", "postgres", *SERVICES):
        assert name in services, f"docker-compose.yml lacks {name}"
    for name in SERVICES:
        command = services[name]["command"]
        assert command[0] in SERVICES


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("kustomization", sorted(K8S.rglob("kustomization.yaml")), ids=str)
def test_kustomization_resources_exist_and_parse(kustomization: Path) -> None:
    spec = yaml.safe_load(kustomization.read_text())
    for resource in [*spec.get("resources", []), *spec.get("components", [])]:
        target = (kustomization.parent / resource).resolve()
        assert target.exists(), f"{kustomization}: missing resource {resource}"
        if target.is_file():
            for doc in _documents(target):
                assert {"apiVersion", "kind", "metadata"} <= doc.keys()


WORKLOADS = ("Deployment", "StatefulSet")


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") in WORKLOADS]


def _containers() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in K8S.rglob("*.yaml"):
        found.extend(
            c for doc in _workloads(_documents(path)) for c in doc["spec"]["template"]["spec"]["containers"]
        )
    return found


def _ours(container: dict[str, Any]) -> bool:
    return str(container["image"]).split("/")[-1].split(":")[0] == "llmscope"


def test_k8s_containers_run_real_subcommands() -> None:
    ours = [c for c in _containers() if _ours(c)]
    assert {c["args"][0] for c in ours} == set(SERVICES)


VARIABLE = re.compile(r"\b(LLMSCOPE_[A-Z0-9_]+|NATS_URL|NATS_USER|NATS_PASSWORD[A-Z_]*|DATABASE_URL)\b")


def test_every_variable_the_manifests_set_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    names: set[str] = set()
    for path in [ROOT / "docker-compose.yml", *K8S.rglob("*.yaml")]:
        names |= set(re.findall(VARIABLE, path.read_text()))
    undocumented = sorted(n for n in names if f"`{n}`" not in readme)
    assert not undocumented, f"set in manifests but not documented in README.md: {undocumented}"


def test_the_dev_overlay_api_key_is_one_the_api_accepts() -> None:
    overlay = K8S / "overlays" / "dev"
    assert {"path": "secret.yaml"} in yaml.safe_load((overlay / "kustomization.yaml").read_text())["patches"]
    (secret,) = [d for d in _documents(overlay / "secret.yaml") if d["metadata"]["name"] == "llmscope"]
    base = _documents(K8S / "base" / "config.yaml")
    (base_secret,) = [d for d in base if d["kind"] == "Secret" and d["metadata"]["name"] == "llmscope"]
    env = dict(base_secret["stringData"])
    # The base's placeholder is refused, so an unedited secret never serves a known key.
    with pytest.raises(ConfigError, match="LLMSCOPE_API_KEY"):
        ApiSettings.from_env(Env(env))
    settings = ApiSettings.from_env(Env({**env, **secret["stringData"]}))
    assert settings.api_key is not None


def _assert_restricted(workload: dict[str, Any]) -> None:
    """Pod Security Standard "restricted", plus a read-only root filesystem."""
    name = workload["metadata"]["name"]
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    assert pod["automountServiceAccountToken"] is False, name
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert "memory" in container["resources"]["limits"], name
        assert {"readinessProbe", "livenessProbe"} <= container.keys(), name


def test_every_workload_file_is_restricted_and_probed() -> None:
    workloads = [doc for path in K8S.rglob("*.yaml") for doc in _workloads(_documents(path))]
    assert len(workloads) >= 7
    for workload in workloads:
        _assert_restricted(workload)


def test_our_services_have_startup_probes_and_a_writable_tmp() -> None:
    # api and alerter open their port only after Postgres and NATS answer: without a startup
    # probe the liveness probe would restart them while they wait.
    for path in (K8S / "base").glob("*.yaml"):
        for workload in _workloads(_documents(path)):
            (container,) = workload["spec"]["template"]["spec"]["containers"]
            assert (
                container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"]
                >= 120
            )
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_the_base_probes_nothing_that_only_the_dev_overlay_runs() -> None:
    (targets,) = [d for d in _documents(K8S / "base" / "prober.yaml") if d["kind"] == "ConfigMap"]
    config = yaml.safe_load(targets["data"]["targets.yaml"])
    dev = [d for p in (K8S / "overlays" / "dev").glob("*.yaml") for d in _documents(p)]
    dev_services = {d["metadata"]["name"] for d in dev if d.get("kind") == "Service"}
    assert "sim" in dev_services
    for target in config["targets"]:
        host = target["base_url"].split("//")[1].split(":")[0].split("/")[0]
        assert host not in dev_services, target


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/system-packages installs a pinned one from PyPI)")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_each_overlay_renders_restricted_consistent_objects(overlay: Path) -> None:
    docs = _kustomize(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"ServiceAccount", "PodDisruptionBudget", "NetworkPolicy", "StatefulSet", "Deployment"} <= kinds
    # values.yaml is local configuration: it feeds the others and is never applied.
    assert not [d for d in docs if d["metadata"]["name"] == "llmscope-values"]
    for workload in _workloads(docs):
        _assert_restricted(workload)
    images = {
        c["image"] for w in _workloads(docs) for c in w["spec"]["template"]["spec"]["containers"] if _ours(c)
    }
    assert len(images) == 1, f"{overlay.name}: LLMscope containers with different images: {images}"
    (engine,) = [w for w in _workloads(docs) if w["metadata"]["name"] == "spc-engine"]
    (container,) = engine["spec"]["template"]["spec"]["containers"]
    # The replica count lives in one place: the replicas share the partitions themselves.
    assert "LLMSCOPE_SPC_REPLICAS" not in {e["name"] for e in container["env"]}
    assert engine["spec"]["replicas"] >= 1


def test_dev_overlay_never_pulls_the_locally_loaded_image() -> None:
    docs = _kustomize(K8S / "overlays" / "dev")
    ours = [c for w in _workloads(docs) for c in w["spec"]["template"]["spec"]["containers"] if _ours(c)]
    # The simulator included; the persister runs inside the API unless components/persister-apart.
    assert {c["args"][0] for c in ours} == set(SERVICES) - {APART}
    assert {c["imagePullPolicy"] for c in ours} == {"IfNotPresent"}


def test_one_value_changes_every_object_that_uses_it(tmp_path: Path) -> None:
    # The README's way: edit the overlay's values.yaml, nothing else.
    shutil.copytree(K8S, tmp_path / "k8s")
    values_path = tmp_path / "k8s" / "overlays" / "dev" / "values.yaml"
    values = yaml.safe_load(values_path.read_text())
    values["data"].update(
        spcEngineReplicas="5",
        image="registry.example/llmscope:9.9.9",
        secretName="mine",
        natsSecretName="my-nats",
    )
    values_path.write_text(yaml.safe_dump(values))
    docs = _kustomize(values_path.parent)
    (engine,) = [w for w in _workloads(docs) if w["metadata"]["name"] == "spc-engine"]
    assert engine["spec"]["replicas"] == 5
    ours = [c for w in _workloads(docs) for c in w["spec"]["template"]["spec"]["containers"] if _ours(c)]
    assert len(ours) == len(SERVICES) - 1  # all but the persister apart
    assert {c["image"] for c in ours} == {"registry.example/llmscope:9.9.9"}
    secrets = {ref["secretRef"]["name"] for c in ours for ref in c.get("envFrom", []) if "secretRef" in ref}
    assert secrets == {"mine"}
    # The NATS passwords: each service's own key, and all of them for the bundled NATS.
    (nats,) = [w for w in _workloads(docs) if w["metadata"]["name"] == "nats"]
    nats_containers = [*ours, *nats["spec"]["template"]["spec"]["containers"]]
    keyed = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for c in nats_containers
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert keyed == {"my-nats"}


def test_every_compose_service_restarts_and_has_a_healthcheck() -> None:
    services = _compose()["services"]
    # The one-shot setup service: it exits 0 once done, so it restarts only after a failure.
    setup = services.pop("setup")
    assert setup["restart"] == "on-failure"
    assert setup["command"] == ["setup"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name
        assert service["healthcheck"]["test"], name


def test_autoscaling_owns_the_api_replica_count_within_the_values_bounds() -> None:
    overlay = K8S / "overlays" / "example"
    docs = _kustomize(overlay)
    (values,) = _documents(overlay / "values.yaml")
    (hpa,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["metadata"]["namespace"] == "llmscope"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert hpa["spec"]["minReplicas"] == int(values["data"]["apiReplicas"])
    assert hpa["spec"]["maxReplicas"] == int(values["data"]["apiMaxReplicas"])
    assert hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (api,) = [w for w in _workloads(docs) if w["metadata"]["name"] == "api"]
    # A replica count in the Deployment would be reset by every `kubectl apply`, fighting the HPA.
    assert "replicas" not in api["spec"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert "cpu" in container["resources"]["requests"]  # utilization is measured against it


def test_the_nats_cluster_component_replicates_every_stream_on_three_servers(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "cluster"
    overlay.mkdir()
    shutil.copy(K8S / "overlays" / "example" / "values.yaml", overlay / "values.yaml")
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../../base", "values.yaml"],
                "components": [
                    "../../components/nats-cluster",
                    "../../components/network-policies",
                    "../../components/values",
                ],
            }
        )
    )
    docs = _kustomize(overlay)
    (nats_sts,) = [w for w in _workloads(docs) if w["metadata"]["name"] == "nats"]
    _assert_restricted(nats_sts)
    size = nats_sts["spec"]["replicas"]
    assert size == 3
    assert nats_sts["spec"]["podManagementPolicy"] == "Parallel"
    (container,) = nats_sts["spec"]["template"]["spec"]["containers"]
    (routes,) = [a for a in container["args"] if a.startswith("--routes=")]
    assert sorted(routes.removeprefix("--routes=").split(",")) == [
        f"nats://nats-{i}.{nats_sts['spec']['serviceName']}:6222" for i in range(size)
    ]
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "llmscope"]
    assert config["data"]["LLMSCOPE_STREAM_REPLICAS"] == str(size)
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "llmscope"]
    assert secret["stringData"]["NATS_URL"] == "nats://nats:4222"
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services[nats_sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    assert "nats" in services
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["ingress"][0].get("ports") == [{"port": 6222}] for p in policies)
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "nats"]
    assert pdb["spec"]["maxUnavailable"] == 1  # quorum kept through a drain


def _with_component(tmp_path: Path, overlay: str, component: str | None) -> Path:
    """A copy of an overlay with ``component`` listed first (before components/values)."""
    shutil.copytree(K8S, tmp_path / "k8s")
    directory = tmp_path / "k8s" / "overlays" / overlay
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if component:
        spec["components"].insert(0, f"../../components/{component}")
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return directory


def _env_of(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the pod gets it: its ConfigMap and Secret, then its own
    values (a secret's key reads as the placeholder ``<secret/key>``)."""
    env: dict[str, str] = {}
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])]["data"])
        elif ("Secret", source["secretRef"]["name"]) in by_name:
            env.update(by_name[("Secret", source["secretRef"]["name"])]["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<{ref['name']}/{ref['key']}>"
    return env


def _api_settings(env: dict[str, str]) -> ApiSettings:
    """What the API or persister reads from ``env``; the example overlay's own secret (not
    rendered: the user's) would give the database URL."""
    return ApiSettings.from_env(
        Env({"DATABASE_URL": "postgresql://theirs@db/llmscope", **env}), require_api_key=False
    )


@pytest.mark.parametrize("overlay", ["dev", "example"])
def test_the_persister_apart_component_gives_the_persister_its_own_probed_pods(
    tmp_path: Path, overlay: str
) -> None:
    docs = _kustomize(_with_component(tmp_path, overlay, "persister-apart"))
    values = yaml.safe_load((K8S / "overlays" / overlay / "values.yaml").read_text())["data"]
    workloads = {w["metadata"]["name"]: w for w in _workloads(docs)}
    persister, api = workloads[APART], workloads["api"]
    _assert_restricted(persister)
    (container,) = persister["spec"]["template"]["spec"]["containers"]
    (api_container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [APART]
    # The overlay's values reach it as they reach the API: image, pull policy, both secrets.
    for key in ("image", "imagePullPolicy", "envFrom"):
        assert container[key] == api_container[key], key
    assert container["envFrom"][1]["secretRef"]["name"] == values["secretName"]
    assert container["ports"] == [{"name": "http", "containerPort": 8004}]
    probes = {
        kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "http"},
        "readinessProbe": {"path": "/readyz", "port": "http"},
        "livenessProbe": {"path": "/healthz", "port": "http"},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # What the process reads from that environment: its health server on the probed port, on
    # every address, as the `persister` NATS user with that user's password.
    env = _env_of(container, docs)
    assert env["NATS_USER"] == "persister"
    assert env["NATS_PASSWORD"] == f"<{values['natsSecretName']}/NATS_PASSWORD_PERSISTER>"
    settings = _api_settings(env)
    assert (settings.persister_health_host, settings.persister_health_port) == ("0.0.0.0", 8004)
    # ... and the API pods no longer run one of their own.
    assert _api_settings(_env_of(api_container, docs)).persister is False
    assert "LLMSCOPE_PERSISTER_HEALTH_PORT" not in _env_of(api_container, docs)
    labels = persister["spec"]["template"]["metadata"]["labels"]
    assert persister["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (budget,) = [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == APART]
    assert budget["spec"]["selector"] == persister["spec"]["selector"]
    for monitor in [d for d in docs if d["kind"] == "PodMonitor"]:  # components/monitoring
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"http"}
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    # Postgres (bundled, dev) and NATS let it in; Prometheus scrapes its port.
    (postgres_clients,) = policies["allow-postgres-clients"]["spec"]["ingress"][0]["from"]
    (expression,) = postgres_clients["podSelector"]["matchExpressions"]
    assert labels["app.kubernetes.io/name"] in expression["values"]
    (nats_clients,) = policies["allow-nats-clients"]["spec"]["ingress"][0]["from"]
    assert nats_clients["podSelector"]["matchLabels"].items() <= labels.items()
    assert policies["allow-metrics"]["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert all(d["metadata"].get("namespace") == "llmscope" for d in docs if d["kind"] != "Namespace")


def test_without_the_component_the_api_runs_the_persister(tmp_path: Path) -> None:
    docs = _kustomize(K8S / "overlays" / "example")
    assert APART not in {w["metadata"]["name"] for w in _workloads(docs)}
    (api,) = [w for w in _workloads(docs) if w["metadata"]["name"] == "api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert _api_settings(_env_of(container, docs)).persister is True
