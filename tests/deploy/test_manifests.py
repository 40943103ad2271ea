"""docker-compose.yml and the kustomize manifests are valid and agree with the CLI and README.

There is no Docker engine or cluster here, so these checks are static: the compose file against
the Compose Specification schema, every kustomization's resources present, every container
command a real `llmscope` subcommand, and every LLMSCOPE_* variable they set documented.
"""

from __future__ import annotations

import re
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
    for resource in spec["resources"]:
        target = (kustomization.parent / resource).resolve()
        assert target.exists(), f"{kustomization}: missing resource {resource}"
        if target.is_file():
            for doc in _documents(target):
                assert {"apiVersion", "kind", "metadata"} <= doc.keys()


def _containers() -> list[dict[str, Any]]:
    found = []
    for path in K8S.rglob("*.yaml"):
        for doc in _documents(path):
            if doc.get("kind") in ("Deployment", "StatefulSet"):
                found.extend(doc["spec"]["template"]["spec"]["containers"])
    return found


def test_k8s_containers_run_real_subcommands() -> None:
    ours = [c for c in _containers() if c["image"] == "llmscope"]
    assert {c["args"][0] for c in ours} == set(SERVICES)


def test_every_variable_the_manifests_set_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    names: set[str] = set()
    for path in [ROOT / "docker-compose.yml", *K8S.rglob("*.yaml")]:
        names |= set(re.findall(r"\b(LLMSCOPE_[A-Z0-9_]+|NATS_URL|DATABASE_URL)\b", path.read_text()))
    undocumented = sorted(n for n in names if f"`{n}`" not in readme)
    assert not undocumented, f"set in manifests but not documented in README.md: {undocumented}"


def test_the_dev_overlay_api_key_is_one_the_api_accepts() -> None:
    overlay = K8S / "overlays" / "dev"
    assert {"path": "secret.yaml"} in yaml.safe_load((overlay / "kustomization.yaml").read_text())["patches"]
    (secret,) = _documents(overlay / "secret.yaml")
    (base_secret,) = [d for d in _documents(K8S / "base" / "config.yaml") if d["kind"] == "Secret"]
    env = dict(base_secret["stringData"])
    # The base's placeholder is refused, so an unedited secret never serves a known key.
    with pytest.raises(ConfigError, match="LLMSCOPE_API_KEY"):
        ApiSettings.from_env(Env(env))
    settings = ApiSettings.from_env(Env({**env, **secret["stringData"]}))
    assert settings.api_key is not None
