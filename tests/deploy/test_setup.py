"""The setup step: only the ``setup`` user makes streams and buckets; services wait for it.

A real nats-server on the committed users file (``deploy/nats/users.conf``) with the dev
overlay's passwords, as compose and Kubernetes run it: the services' users may not create,
change or delete a stream or a bucket, the setup user may, ``llmscope setup`` makes every one
declared in :mod:`llmscope.bus.layout`, and an SPC engine started before it (check only, as
compose and Kubernetes run it) says which stream it misses and what to run, then starts once
setup has run. And the rendered Kubernetes manifests carry the Job that runs it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from llmscope.bus.connection import connect
from llmscope.bus.layout import bucket_configs
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import DEFAULT_TELEMETRY_PARTITIONS, stream_configs, telemetry_partitions
from llmscope.config.env import Env
from llmscope.proto import permissions, subjects
from llmscope.stack import natsconf
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually
from tests.deploy.test_manifests import OVERLAYS, _kustomize, _ours
from tests.deploy.test_nats_users import _dev_passwords, _overlay_with, _refused, deployed_nats

__all__ = ["deployed_nats"]  # the fixture, used by the tests below

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SERVICES = (permissions.SPC_ENGINE, permissions.ALERTER, permissions.API)


def _env(url: str, user: str) -> dict[str, str]:
    """What compose and Kubernetes give a process of ``user``."""
    password = _dev_passwords()[natsconf.password_variable(user)]
    return {"NATS_URL": url, "NATS_USER": user, "NATS_PASSWORD": password}


async def _as(url: str, user: str) -> NATS:
    settings = BusSettings.from_env(Env(_env(url, user)))
    return await connect(settings.nats_url, f"test-{user}", give_up_after=20)


async def _run_setup(url: str, user: str = permissions.SETUP, **extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "llmscope.stack.cli", "setup", "--wait", "20"),
        env={**os.environ, **_env(url, user), **extra},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_llmscope_setup_makes_every_declared_stream_and_bucket_and_applies_retention(
    deployed_nats: tuple[str, Path],
) -> None:
    url, log = deployed_nats
    code, out = await _run_setup(url)
    assert code == 0, out
    operator = await _as(url, permissions.OPERATOR)
    try:
        js = operator.jetstream()
        for wanted in stream_configs(BusSettings()):
            info = await js.stream_info(wanted.name or "")
            assert set(info.config.subjects or ()) == set(wanted.subjects or ()), wanted.name
            assert info.config.max_age == wanted.max_age, wanted.name
        telemetry = await js.stream_info(subjects.STREAM_TELEMETRY)
        assert telemetry_partitions(telemetry.config) == DEFAULT_TELEMETRY_PARTITIONS
        for bucket in bucket_configs(BusSettings()):
            info = await js.stream_info(f"KV_{bucket.bucket}")
            assert info.config.storage == bucket.storage, bucket.bucket
        members = await js.stream_info(f"KV_{subjects.SPC_MEMBERS_BUCKET}")
        # On disk: a nats-server restart keeps who is alive (an engine user may not remake it).
        assert members.config.storage == StorageType.FILE
        assert members.config.max_age == 10.0  # the engine's default lease TTL

        # A new retention reaches the streams through setup run again (idempotent).
        code, out = await _run_setup(url, LLMSCOPE_TELEMETRY_MAX_AGE_H="2", LLMSCOPE_SPC_LEASE_TTL_S="4")
        assert code == 0, out
        assert (await js.stream_info(subjects.STREAM_TELEMETRY)).config.max_age == 2 * 3600
        assert (await js.stream_info(f"KV_{subjects.SPC_MEMBERS_BUCKET}")).config.max_age == 4.0
    finally:
        await operator.close()

    # A service's user running setup is refused, and setup says so with its exit code.
    code, out = await _run_setup(url, permissions.API, LLMSCOPE_TELEMETRY_MAX_AGE_H="1")
    assert code == 1, out
    assert "setup user" in out
    assert _refused(log, permissions.API, f"$JS.API.STREAM.UPDATE.{subjects.STREAM_TELEMETRY}")


async def test_service_users_cannot_create_change_or_delete_streams_and_the_setup_user_can(
    deployed_nats: tuple[str, Path],
) -> None:
    url, log = deployed_nats
    setup = await _as(url, permissions.SETUP)
    clients = {user: await _as(url, user) for user in SERVICES}
    try:
        sjs = setup.jetstream(timeout=5)
        violations = stream_configs(BusSettings())[1]
        assert violations.name == subjects.STREAM_VIOLATIONS
        await sjs.add_stream(violations)
        for user, nc in clients.items():
            js = nc.jetstream(timeout=2)
            forged = StreamConfig(name=f"FORGED_{user.replace('-', '_')}", subjects=[f"forged.{user}.>"])
            with pytest.raises(NatsTimeoutError):
                await js.add_stream(forged)
            shorter = StreamConfig(name=violations.name, subjects=violations.subjects, max_age=60.0)
            with pytest.raises(NatsTimeoutError):
                await js.update_stream(shorter)
            with pytest.raises(NatsTimeoutError):
                await js.delete_stream(subjects.STREAM_VIOLATIONS)
            with pytest.raises(NatsTimeoutError):
                await js.create_key_value(KeyValueConfig(bucket=f"forged_{user.replace('-', '_')}"))
            for action, name in (
                ("CREATE", forged.name),
                ("UPDATE", subjects.STREAM_VIOLATIONS),
                ("DELETE", subjects.STREAM_VIOLATIONS),
                ("CREATE", f"KV_forged_{user.replace('-', '_')}"),
            ):
                subject = f"$JS.API.STREAM.{action}.{name}"
                await eventually(functools.partial(_refused, log, user, subject), within=10, what=subject)
            # What they still do: read a stream's configuration (the check of check-only mode).
            assert (await js.stream_info(subjects.STREAM_VIOLATIONS)).config.max_age == violations.max_age
        names = await sjs.streams_info()
        assert {s.config.name for s in names} == {subjects.STREAM_VIOLATIONS}  # nothing forged

        # The setup user creates, changes and deletes streams and buckets.
        await sjs.add_stream(StreamConfig(name="SCRATCH", subjects=["scratch.>"]))
        await sjs.update_stream(StreamConfig(name="SCRATCH", subjects=["scratch.>"], max_age=60.0))
        assert (await sjs.stream_info("SCRATCH")).config.max_age == 60.0
        assert await sjs.delete_stream("SCRATCH")
        await sjs.create_key_value(KeyValueConfig(bucket="scratch"))
        assert await sjs.delete_key_value("scratch")
    finally:
        for nc in (*clients.values(), setup):
            await nc.close()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


async def test_a_check_only_engine_started_before_setup_says_what_to_run_and_starts_once_it_ran(
    deployed_nats: tuple[str, Path],
) -> None:
    url, log = deployed_nats
    port = free_port()
    env = {
        **os.environ,
        **_env(url, permissions.SPC_ENGINE),
        "LLMSCOPE_MANAGE_STREAMS": "false",
        "LLMSCOPE_SPC_HEALTH_PORT": str(port),
        "LLMSCOPE_SPC_LEASE_TTL_S": "2",
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "llmscope.stack.cli", "spc-engine"), env=env, stderr=asyncio.subprocess.PIPE
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode())

    reading = asyncio.create_task(read())
    try:

        def told() -> bool:
            return any(
                "not set up" in line and subjects.STREAM_TELEMETRY in line and "llmscope setup" in line
                for line in lines
            )

        await eventually(told, within=60, what="the engine's line naming the stream and the setup command")
        assert proc.returncode is None  # waiting, not crash-looping
        assert not await asyncio.to_thread(_ready, port)
        code, out = await _run_setup(url, LLMSCOPE_SPC_LEASE_TTL_S="2")
        assert code == 0, out
        await eventually(lambda: _ready(port), within=60, what="the engine ready once setup ran")
        assert any("streams and buckets are set up" in line for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reading
    # It never tried to make a stream or a bucket itself.
    refused = [x for x in log.read_text().splitlines() if "Violation" in x and "spc-engine" in x]
    assert not refused, refused


def _job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    assert job["metadata"]["name"] == "llmscope-setup"
    return job


def _env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_runs_the_setup_job_as_the_setup_user(overlay: Path) -> None:
    docs = _kustomize(overlay)
    job = _job(docs)
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0  # so the next apply may run it again
    (container,) = pod["containers"]
    assert container["args"] == ["setup"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = _env_of(container)
    assert env["NATS_USER"] == permissions.SETUP
    assert env["NATS_PASSWORD"]["secretKeyRef"]["key"] == "NATS_PASSWORD_SETUP"
    assert env["NATS_URL"]["secretKeyRef"]["key"] == "NATS_URL"
    # Not the database URL or the API key: only the ConfigMap (retention) in bulk.
    assert [list(ref) for ref in container["envFrom"]] == [["configMapRef"]]
    # The same image as every service; the services only check (the ConfigMap they all read).
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    images = {c["image"] for w in workloads for c in w["spec"]["template"]["spec"]["containers"] if _ours(c)}
    assert images == {container["image"]}
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "llmscope"]
    assert config["data"]["LLMSCOPE_MANAGE_STREAMS"] == "false"
    for workload in workloads:
        for c in workload["spec"]["template"]["spec"]["containers"]:
            if _ours(c) and c["args"][0] != "sim":
                assert {"configMapRef": {"name": "llmscope"}} in c["envFrom"], workload["metadata"]["name"]
                assert "LLMSCOPE_MANAGE_STREAMS" not in _env_of(c)  # nobody overrides it


def test_the_setup_job_follows_the_values_and_the_clustered_nats(tmp_path: Path) -> None:
    values_path = tmp_path / "k8s" / "overlays" / "dev" / "values.yaml"
    shutil.copytree(K8S, tmp_path / "k8s")
    values = yaml.safe_load(values_path.read_text())
    values["data"].update(
        image="registry.example/llmscope:9.9.9", secretName="mine", natsSecretName="my-nats"
    )
    values_path.write_text(yaml.safe_dump(values))
    (container,) = _job(_kustomize(values_path.parent))["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/llmscope:9.9.9"
    env = _env_of(container)
    assert env["NATS_URL"]["secretKeyRef"]["name"] == "mine"
    assert env["NATS_PASSWORD"]["secretKeyRef"]["name"] == "my-nats"
    # Three replicas on the NATS cluster: the Job reads LLMSCOPE_STREAM_REPLICAS from the ConfigMap.
    docs = _kustomize(_overlay_with(tmp_path / "cluster", "nats-cluster"))
    (config,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "llmscope"]
    assert config["data"]["LLMSCOPE_STREAM_REPLICAS"] == "3"
    (job_container,) = _job(docs)["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": "llmscope"}} in job_container["envFrom"]
