"""The README's kind walkthrough, step by step, as far as a machine without a cluster can take it.

No Kubernetes can run here (no kind, k3s or minikube binary, no node image: no registry is
reachable), so each command of "From nothing to a running stack in kind" is checked against what
it relies on: the image it builds is the Dockerfile that tests/deploy/test_image_build.py builds
and starts; the tag it builds is the one it loads into kind and the one every LLMscope container
of the dev overlay runs, never pulled; the overlay it applies renders (and validates strictly in
test_k8s_validate.py); the objects it waits for and the service it forwards exist in the rendered
overlay, in the namespace it names, on the port it names, reaching the API's container port.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
KINDS = {"statefulset": "StatefulSet", "deploy": "Deployment", "deployment": "Deployment", "svc": "Service"}


def walkthrough() -> list[list[str]]:
    """The walkthrough's commands, split like a shell would (comments dropped)."""
    start = README.index("From nothing to a running stack in kind:")
    block = re.search(r"```sh\n(.*?)```", README[start:], re.DOTALL)
    assert block is not None, "the kind walkthrough has no sh block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def command(name: str, sub: str) -> list[str]:
    (found,) = [c for c in walkthrough() if c[:2] == [name, sub]]
    return found


def option(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def rendered(overlay: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (.ci/system-packages installs a pinned one from PyPI)")
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    found = [
        d
        for d in docs
        if d["kind"] == kind and d["metadata"]["name"] == name and d["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"{kind}/{name} in namespace {namespace}: {len(found)} found"
    return found[0]


def test_the_walkthrough_is_the_commands_checked_here() -> None:
    # A step added to the README without a check here fails this test.
    assert [c[:2] for c in walkthrough()] == [
        ["docker", "build"],
        ["kind", "create"],
        ["kind", "load"],
        ["kubectl", "apply"],
        ["kubectl", "-n"],
        ["kubectl", "-n"],
    ]


def test_the_image_built_is_the_one_loaded_and_run_by_every_llmscope_container() -> None:
    build = command("docker", "build")
    assert (ROOT / option(build, "-f")) == ROOT / "deploy" / "docker" / "Dockerfile"
    assert build[-1] == "."  # the repository as context, as the image build test uses it
    tag = option(build, "-t")
    load = command("kind", "load")
    assert load[2:4] == ["docker-image", tag]
    assert option(load, "--name") == option(command("kind", "create"), "--name")
    docs = rendered(ROOT / option(command("kubectl", "apply"), "-k"))
    ours = [
        c
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"].split(":")[0] == tag.split(":")[0]
    ]
    assert len(ours) == 5  # api, prober, spc-engine, alerter and the simulator
    assert {c["image"] for c in ours} == {tag}
    # A loaded image is not in any registry: pulling it would fail with ErrImagePull.
    assert {c["imagePullPolicy"] for c in ours} == {"IfNotPresent"}


def test_what_the_walkthrough_waits_for_and_forwards_exists() -> None:
    docs = rendered(ROOT / option(command("kubectl", "apply"), "-k"))
    waits, forward = [c for c in walkthrough() if c[:2] == ["kubectl", "-n"]]
    namespace = waits[2]
    assert forward[2] == namespace
    find(docs, "Namespace", namespace, None)
    assert waits[3:5] == ["rollout", "status"]
    targets = [t for t in waits[5:] if not t.startswith("--")]
    assert len(targets) == 3
    for target in targets:
        kind, name = target.split("/")
        find(docs, KINDS[kind], name, namespace)
    assert forward[3] == "port-forward"
    kind, name = forward[4].split("/")
    service = find(docs, KINDS[kind], name, namespace)
    local, remote = forward[5].split(":")
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == int(remote)]
    # The service's target port is the API container's named port, the one the API listens on.
    api = find(docs, "Deployment", "api", namespace)
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    (container,) = api["spec"]["template"]["spec"]["containers"]
    (named,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert container["args"][0] == "api"
    assert f"http://localhost:{local}" in README
    assert named["containerPort"] == 8000  # the API's default LLMSCOPE_PORT


def test_the_api_key_the_readme_gives_is_the_dev_overlays() -> None:
    key = re.search(r"The dev overlay's API key is `([^`]+)`", README)
    assert key is not None
    docs = rendered(ROOT / option(command("kubectl", "apply"), "-k"))
    secret = find(docs, "Secret", "llmscope", "llmscope")
    values = secret.get("stringData") or {}
    assert values.get("LLMSCOPE_API_KEY") == key.group(1)
