"""compose and Kubernetes run NATS with the users of ``llmscope up`` (llmscope.proto.permissions).

The configuration they give nats-server is generated (``python -m llmscope.stack.natsconf``);
these tests check that it is current, that both deployments load it with every password from a
secret and give each service its own user, and run a real nats-server on the committed file with
the dev overlay's passwords: each service connects as its own user through NATS_USER and
NATS_PASSWORD, and the server refuses what that user's allow list leaves out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from llmscope.bus.connection import connect, subscriptions_in_place
from llmscope.bus.layout import apply, layout
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import DEFAULT_TELEMETRY_PARTITIONS, ensure_streams
from llmscope.config.env import ConfigError, Env
from llmscope.proto import codec, permissions, subjects
from llmscope.stack import natsconf
from llmscope.stack.embedded import nats_server_binary
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually
from tests.api.factories import telemetry, violation
from tests.deploy.test_manifests import _kustomize

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VARIABLES = {user: natsconf.password_variable(user) for user in permissions.USERS}


def test_the_generated_nats_configuration_is_current() -> None:
    assert natsconf.main(["--check"]) == 0, "run `make nats-users`"
    conf = natsconf.deployment_conf()
    for user, variable in VARIABLES.items():
        assert f'{{user: "{user}", password: ${variable}' in conf


def test_compose_gives_nats_every_user_and_each_service_its_own() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    nats = compose["nats"]
    (mount,) = [v for v in nats["volumes"] if v.endswith(":/etc/nats/users.conf:ro")]
    assert ROOT / mount.split(":")[0] == natsconf.COMPOSE_CONF
    assert nats["command"][:2] == ["--config", "/etc/nats/users.conf"]
    for variable in VARIABLES.values():
        # Required (`:?`): compose refuses to start without it instead of leaving the user open.
        assert nats["environment"][variable] == f"${{{variable}:?set {variable}}}"
    for user in permissions.SERVICE_USERS:
        env = compose[user]["environment"]
        assert env["NATS_USER"] == user
        assert env["NATS_PASSWORD"] == nats["environment"][VARIABLES[user]]
        assert env["NATS_URL"] == "nats://nats:4222"
    assert compose["prober"]["environment"]["LLMSCOPE_PROBER_MANAGE_STREAMS"] == "false"
    # The persister apart (profile persister-apart) is its own user, with only what it needs.
    persister = compose["persister"]
    assert persister["profiles"] == ["persister-apart"]
    assert persister["command"] == ["persister"]
    assert persister["environment"]["NATS_USER"] == permissions.PERSISTER
    assert persister["environment"]["NATS_PASSWORD"] == nats["environment"][VARIABLES[permissions.PERSISTER]]
    assert persister["environment"]["LLMSCOPE_PERSISTER_HEALTH_PORT"] == "8004"
    assert "8004/readyz" in " ".join(persister["healthcheck"]["test"])
    assert compose["api"]["environment"]["LLMSCOPE_PERSISTER"] == "${LLMSCOPE_PERSISTER:-true}"
    assert "NATS_USER" not in compose["sim"]["environment"]  # the simulator uses no NATS


def _overlay_with(tmp_path: Path, nats_component: str | None) -> Path:
    """The example overlay with NATS by URL, bundled, or the three-node cluster."""
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "example"
    spec = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    if nats_component:
        spec["components"].insert(0, f"../../components/{nats_component}")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    return overlay


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize("nats_component", [None, "bundled", "nats-cluster"])
def test_kubernetes_gives_nats_every_user_and_each_service_its_own(
    tmp_path: Path, nats_component: str | None
) -> None:
    overlay = _overlay_with(tmp_path, nats_component)
    docs = _kustomize(overlay)
    secret = yaml.safe_load((overlay / "values.yaml").read_text())["data"]["natsSecretName"]
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for user in permissions.SERVICE_USERS:
        container = _container(workloads[user])
        env = {e["name"]: e for e in container["env"]}
        assert env["NATS_USER"]["value"] == user
        assert _secret_refs(container)["NATS_PASSWORD"] == (secret, VARIABLES[user])
    manage_streams = {"name": "LLMSCOPE_PROBER_MANAGE_STREAMS", "value": "false"}
    assert manage_streams in _container(workloads["prober"])["env"]
    if nats_component is None:
        assert "nats" not in workloads  # your own NATS: deploy/nats/users.conf lists its users
        return
    nats = workloads["nats"]
    container = _container(nats)
    assert "--config=/etc/nats/users.conf" in container["args"]
    assert _secret_refs(container) == {v: (secret, v) for v in VARIABLES.values()}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/nats"]
    (volume,) = [v for v in nats["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    configmap = configmaps[volume["configMap"]["name"]]
    assert configmap["data"]["users.conf"] == natsconf.deployment_conf()


def test_the_dev_overlay_gives_every_nats_user_a_password() -> None:
    docs = _kustomize(K8S / "overlays" / "dev")
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "llmscope-nats"]
    assert {k: v for k, v in secret["stringData"].items() if _usable(v)}.keys() == set(VARIABLES.values())


def _usable(password: str) -> bool:
    """What nats-server reads back as the same string from its environment (natsconf's header)."""
    return bool(re.fullmatch(r"[A-Za-z0-9-]+", password)) and not password.isdigit()


def _dev_passwords() -> dict[str, str]:
    """The dev overlay's passwords, read from its files (no kubectl needed)."""
    for doc in yaml.safe_load_all((K8S / "overlays" / "dev" / "secret.yaml").read_text()):
        if doc and doc["metadata"]["name"] == "llmscope-nats":
            return {str(k): str(v) for k, v in doc["stringData"].items()}
    raise AssertionError("overlays/dev/secret.yaml has no llmscope-nats")


@pytest.fixture
def deployed_nats(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nats-server as compose and Kubernetes start it: the committed users.conf, the passwords in
    its environment; its URL and its log."""
    port = free_port()
    log_path = tmp_path / "nats.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            *(str(nats_server_binary()), "--config", str(natsconf.COMPOSE_CONF), "--jetstream"),
            *("--store_dir", str(tmp_path / "store"), "--addr", "127.0.0.1", "--port", str(port)),
        ],
        env={**os.environ, **_dev_passwords()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"nats://127.0.0.1:{port}", log_path
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_nats_user_and_password_go_to_every_server_that_names_no_user() -> None:
    settings = _settings("nats://a:4222, nats://own:pw@b:4222", "spc-engine", "p/w@x")
    # Quoted: a password is any string; a URL that names its own user keeps it (`llmscope up`).
    assert settings.nats_url == "nats://spc-engine:p%2Fw%40x@a:4222,nats://own:pw@b:4222"
    with pytest.raises(ConfigError, match="NATS_PASSWORD"):
        BusSettings.from_env(Env({"NATS_USER": "api"}))
    assert BusSettings.from_env(Env({"NATS_PASSWORD": "unused"})).nats_url == "nats://127.0.0.1:4222"


def _refused(log: Path, user: str, subject: str) -> bool:
    """nats-server logged a permissions violation of ``user`` on ``subject`` (its wording varies
    with the version: user and subject are on one line with "Violation")."""
    return any(
        (f'user:{user}"' in line or f'"{user}"' in line) and "Violation" in line and f'"{subject}"' in line
        for line in log.read_text().splitlines()
    )


def _settings(url: str, user: str, password: str) -> BusSettings:
    """What a service reads from the environment compose and Kubernetes give it."""
    return BusSettings.from_env(Env({"NATS_URL": url, "NATS_USER": user, "NATS_PASSWORD": password}))


async def test_each_service_connects_as_its_own_user_with_its_own_allow_list(
    deployed_nats: tuple[str, Path],
) -> None:
    url, log = deployed_nats
    passwords = _dev_passwords()

    def own(user: str) -> BusSettings:
        return _settings(url, user, passwords[VARIABLES[user]])

    operator = await connect(own(permissions.OPERATOR).nats_url, "test-operator", give_up_after=20)
    setup = await connect(own(permissions.SETUP).nats_url, "test-setup", give_up_after=10)
    api = await connect(own(permissions.API).nats_url, "test-api", give_up_after=10)
    prober = await connect(own(permissions.PROBER).nats_url, "test-prober", give_up_after=10)
    try:
        await ensure_streams(setup.jetstream(), BusSettings())  # the setup user makes the streams
        pjs = prober.jetstream(timeout=2)
        ack = await pjs.publish(subjects.telemetry("ollama", "m"), b"{}", headers={"Nats-Msg-Id": "t1"})
        assert ack.stream == subjects.STREAM_TELEMETRY

        forged = subjects.violations("ollama", "m", "spike")
        with pytest.raises(NatsTimeoutError):
            await pjs.publish(forged, b"{}", headers={"Nats-Msg-Id": "v1"})
        await eventually(lambda: _refused(log, "prober", forged), within=10, what="the server's refusal")
        info = await operator.jetstream().stream_info(subjects.STREAM_VIOLATIONS)
        assert info.state.messages == 0
    finally:
        for nc in (prober, api, setup, operator):
            await nc.close()

    # Another service's password, or none, gets no connection at all.
    wrong = _settings(url, permissions.API, passwords[VARIABLES[permissions.PROBER]])
    with pytest.raises(NoServersError):
        await connect(wrong.nats_url, "test-wrong", give_up_after=3)
    with pytest.raises(NoServersError):
        await connect(url, "test-anonymous", give_up_after=3)


async def _consumers_done(js: JetStreamContext, stream: str) -> bool:
    """Every consumer of ``stream`` has been delivered everything and acked it."""
    infos = await js.consumers_info(stream)
    return bool(infos) and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)


async def test_the_persister_apart_stores_tells_and_acks_as_its_own_user_and_may_do_nothing_else(
    deployed_nats: tuple[str, Path], database_url: str, tmp_path: Path
) -> None:
    """``llmscope persister`` as compose and components/persister-apart run it: the `persister`
    user on the committed users.conf, streams and buckets made by the setup user. It stores
    telemetry, violations and a poison message's dead letter, tells the API processes (a live
    notice on core NATS), acks everything, and the server refuses it nothing. With its password,
    what the `api` user could (publish telemetry or a violation action, read the settings
    bucket's channel secrets, request the alerter, touch another consumer) is refused."""
    url, log = deployed_nats
    passwords = _dev_passwords()

    def own(user: str) -> BusSettings:
        return _settings(url, user, passwords[VARIABLES[user]])

    setup = await connect(own(permissions.SETUP).nats_url, "test-setup", give_up_after=20)
    operator = await connect(own(permissions.OPERATOR).nats_url, "test-operator", give_up_after=10)
    api = await connect(own(permissions.API).nats_url, "test-api", give_up_after=10)
    prober = await connect(own(permissions.PROBER).nats_url, "test-prober", give_up_after=10)
    engine = await connect(own(permissions.SPC_ENGINE).nats_url, "test-engine", give_up_after=10)
    port = free_port()
    environ = {
        **os.environ,
        "NATS_URL": url,
        "NATS_USER": permissions.PERSISTER,
        "NATS_PASSWORD": passwords[VARIABLES[permissions.PERSISTER]],
        "DATABASE_URL": database_url,
        "LLMSCOPE_MANAGE_STREAMS": "false",
        "LLMSCOPE_PERSISTER_HEALTH_PORT": str(port),
    }
    environ.pop("LLMSCOPE_API_KEY", None)
    out = tmp_path / "persister.log"
    proc: asyncio.subprocess.Process | None = None
    try:
        # The setup step's streams and buckets, as the Job llmscope-setup makes them.
        await apply(setup.jetstream(), layout(BusSettings(), partitions=DEFAULT_TELEMETRY_PARTITIONS))
        notices = await api.subscribe(subjects.api_live())  # an API process's tabs
        await subscriptions_in_place(api)
        with out.open("ab") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "llmscope.stack.cli", "persister", env=environ, stdout=sink, stderr=sink
            )

        async def ready() -> bool:
            assert proc is not None
            assert proc.returncode is None, out.read_text()
            with contextlib.suppress(httpx.TransportError):
                async with httpx.AsyncClient(timeout=5) as client:
                    return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            return False

        await eventually(ready, within=60, what="the persister ready")
        probe = telemetry(1, id="apart-probe-1", model="apart-model")
        await prober.jetstream().publish(
            subjects.telemetry(probe.provider, probe.model),
            codec.encode(probe),
            headers={"Nats-Msg-Id": probe.id},
        )
        await prober.jetstream().publish(
            subjects.telemetry(probe.provider, probe.model),
            b"not telemetry",
            headers={"Nats-Msg-Id": "poison"},
        )
        spike = violation(probe, id="apart-violation-1")
        await engine.jetstream().publish(
            subjects.violations(probe.provider, probe.model, spike.rule), codec.encode(spike)
        )
        notice = await notices.next_msg(timeout=60)
        assert b"apart-model" in notice.data

        db = await asyncpg.connect(database_url)
        try:
            seen: list[tuple[int, int, int]] = []

            async def stored() -> bool:
                counts = await db.fetchrow(
                    """SELECT (SELECT count(*) FROM telemetry WHERE id = $1) AS probes,
                              (SELECT count(*) FROM violations WHERE id = $2) AS violations,
                              (SELECT count(*) FROM dead_letters) AS dead""",
                    probe.id,
                    spike.id,
                )
                assert counts is not None
                seen.append((counts["probes"], counts["violations"], counts["dead"]))
                return seen[-1] == (1, 1, 1)

            try:
                await eventually(stored, within=60, what="probe, violation and dead letter stored")
            except AssertionError:
                tails = f"{out.read_text()[-3000:]}\n{log.read_text()[-2000:]}"
                raise AssertionError(
                    f"stored (probes, violations, dead letters): {seen[-1]}\n{tails}"
                ) from None
        finally:
            await db.close()
        ojs = operator.jetstream()
        for stream in (subjects.STREAM_TELEMETRY, subjects.STREAM_VIOLATIONS, subjects.STREAM_DEADLETTER):
            await eventually(
                functools.partial(_consumers_done, ojs, stream), within=30, what=f"{stream} acked"
            )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, out.read_text()
        refused = [line for line in log.read_text().splitlines() if "Violation" in line]
        assert refused == [], refused

        # Its password, and nothing of what the persister does not need.
        own_telemetry = subjects.persister_durable(subjects.STREAM_TELEMETRY)
        persister = await connect(own(permissions.PERSISTER).nats_url, "test-persister", give_up_after=10)
        try:
            pjs = persister.jetstream(timeout=2)
            for forbidden in (
                subjects.telemetry("ollama", "m"),
                subjects.violation_actions("ollama", "resolved"),
                subjects.deadletter("alerter"),
            ):
                with pytest.raises(NatsTimeoutError):
                    await pjs.publish(forbidden, b"{}", headers={"Nats-Msg-Id": f"forged-{forbidden}"})
                await eventually(
                    functools.partial(_refused, log, "persister", forbidden), within=10, what=forbidden
                )
            with pytest.raises(NatsTimeoutError):
                await persister.request(subjects.alerter_silence_list(), b"{}", timeout=2)
            await eventually(
                lambda: _refused(log, "persister", subjects.alerter_silence_list()), within=10, what="request"
            )
            for js_api in (
                f"$JS.API.STREAM.MSG.GET.KV_{subjects.SETTINGS_BUCKET}",  # the channel secrets
                f"$JS.API.CONSUMER.INFO.{subjects.STREAM_VIOLATIONS}.alerter",
                # Its own consumer: never deleted (nor paused) by it.
                f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_TELEMETRY}.{own_telemetry}",
                f"$JS.API.STREAM.PURGE.{subjects.STREAM_TELEMETRY}",
            ):
                await persister.publish(
                    js_api, b"{}", reply=f"{permissions.inbox_prefix(permissions.PERSISTER)}.x"
                )
                await eventually(
                    functools.partial(_refused, log, "persister", js_api), within=10, what=js_api
                )
            info = await operator.jetstream().stream_info(subjects.STREAM_TELEMETRY)
            assert info.state.messages == 2  # the probe and the poison message, nothing forged
        finally:
            await persister.close()
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        for nc in (engine, prober, api, operator, setup):
            await nc.close()
