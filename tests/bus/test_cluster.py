"""LLMscope's streams on a three-node JetStream cluster, started with the nats-cluster manifest's flags.

The kustomize component deploy/k8s/components/nats-cluster runs three nats-server pods and sets
LLMSCOPE_STREAM_REPLICAS=3. There is no Kubernetes here, so this test starts three real
nats-servers on loopback with the StatefulSet's own arguments (pod DNS names and paths mapped to
local ports and directories), creates every stream and a bucket the way the services do, and
shows that losing the leader of a stream loses no acknowledged message and keeps accepting new ones.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext

from llmscope.bus.kv import open_bucket
from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.stack.embedded import nats_server_binary
from llmscope.stack.ports import free_port, free_ports

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "k8s" / "components" / "nats-cluster" / "nats.yaml"
T = TypeVar("T")


def statefulset() -> dict:  # type: ignore[type-arg]
    (sts,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "StatefulSet"]
    return sts  # type: ignore[no-any-return]


def local_args(args: list[str], i: int, routes: list[int], tmp: Path) -> list[str]:
    """The pod's arguments with its DNS names, volume and pid file mapped onto this machine."""
    out = []
    for arg in args:
        arg = arg.replace("$(POD_NAME)", f"nats-{i}")
        arg = arg.replace("0.0.0.0:6222", f"127.0.0.1:{routes[i]}")
        for j, port in enumerate(routes):
            arg = arg.replace(f"nats-{j}.nats-cluster:6222", f"127.0.0.1:{port}")
        arg = arg.replace("=/data", f"={tmp / f'n{i}'}").replace("=/var/run/nats/", f"={tmp}/")
        if arg.startswith("--http_port="):
            arg = f"--http_port={free_port()}"
        out.append(arg)
    leftovers = [a for a in out if "nats-cluster" in a or "/data" in a or "$(" in a]
    assert not leftovers, f"manifest arguments this test does not know how to map: {leftovers}"
    return out


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[str], list[subprocess.Popen[bytes]]]]:
    sts = statefulset()
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    size = sts["spec"]["replicas"]
    ports = free_ports(2 * size)  # asked together: never the same port twice
    routes, clients = ports[:size], ports[size:]
    procs = []
    for i in range(size):
        cmd = [
            str(nats_server_binary()),
            *local_args(container["args"], i, routes, tmp_path),
            "--addr=127.0.0.1",
            f"--port={clients[i]}",
        ]
        log = (tmp_path / f"nats-{i}.log").open("ab")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    try:
        yield [f"nats://127.0.0.1:{p}" for p in clients], procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def retrying(what: Callable[[], Awaitable[T]], within: float = 120.0) -> T:
    """``what()`` once the cluster can answer it (a meta leader or stream leader is being elected)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await what()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.fault
async def test_replicated_streams_survive_the_loss_of_a_stream_leader(
    cluster: tuple[list[str], list[subprocess.Popen[bytes]]],
) -> None:
    urls, procs = cluster
    assert len(procs) == 3
    nc: Client = await nats.connect(servers=urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js: JetStreamContext = nc.jetstream(timeout=5)
        settings = BusSettings(replicas=3)
        await retrying(lambda: ensure_streams(js, settings))
        kv = await retrying(lambda: open_bucket(js, "cluster-test", description="test", replicas=3))
        info = await js.stream_info(subjects.STREAM_TELEMETRY)
        assert info.config.num_replicas == 3
        subject = subjects.telemetry("sim", "llama3")

        async def publish(n: int) -> None:
            # A resend after a leader change carries the same id: stored once.
            await retrying(lambda: js.publish(subject, b"{}", headers={"Nats-Msg-Id": f"m{n}"}))

        for n in range(50):
            await publish(n)
        await kv.put("chart", b"before")

        async def leader() -> str:
            got = (await js.stream_info(subjects.STREAM_TELEMETRY)).cluster
            assert got is not None
            assert got.leader
            assert got.replicas
            assert len(got.replicas) == 2
            return got.leader

        lost = await retrying(leader)
        procs[int(lost.rsplit("-", 1)[1])].kill()

        for n in range(50, 100):
            await publish(n)
        await retrying(lambda: kv.put("chart", b"after"))

        async def new_leader() -> str:
            name = await leader()
            assert name != lost
            return name

        assert await retrying(new_leader) != lost
        state = (await js.stream_info(subjects.STREAM_TELEMETRY)).state
        assert state.messages == 100
        assert (await kv.get("chart")).value == b"after"
    finally:
        await nc.close()
