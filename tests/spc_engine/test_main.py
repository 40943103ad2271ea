"""``llmscope spc-engine`` as a process: /readyz follows NATS, SIGTERM exits 0 whatever NATS
does, /metrics reports the work done and partitions nobody owns."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import nats
import pytest
from nats.js import JetStreamContext

from llmscope.proto import subjects
from llmscope.spc_engine.engine import Engine
from llmscope.spc_engine.membership import MEMBERS_BUCKET, Membership, open_members
from llmscope.spc_engine.partition_consumer import partition_durable
from llmscope.spc_engine.service_core import config_for
from llmscope.spc_engine.settings import SpcSettings
from llmscope.stack.embedded import EmbeddedNats
from llmscope.stack.ports import free_port
from tests.alerter.harness import eventually
from tests.processes import tied
from tests.scrape import Sample, scrape, total, values

from .helpers import telemetry_stream
from .test_service import publish_all


@asynccontextmanager
async def engine_process(
    nats_url: str, log: Path, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """The engine as a child process with its health port; SIGKILLed if a test left it running."""
    port = free_port()
    environ = {**os.environ, "NATS_URL": nats_url, "LLMSCOPE_SPC_HEALTH_PORT": str(port), **env}
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmscope.spc_engine", env=environ, stdout=out, stderr=out, **tied()
        )
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def status_is(session: aiohttp.ClientSession, port: int, expected: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            return resp.status == expected
    except aiohttp.ClientConnectionError:
        return False


@pytest.mark.fault
async def test_readyz_follows_nats_and_sigterm_exits_0_after_an_outage(
    embedded_nats: EmbeddedNats, tmp_path: Path
) -> None:
    log = tmp_path / "engine.log"
    # A TTL longer than the test: the engine never loses its leases to the outage (that exits 1
    # by design, before any signal), so the exit code is the signal's.
    async with engine_process(embedded_nats.url, log, LLMSCOPE_SPC_LEASE_TTL_S="600") as (proc, port):
        async with aiohttp.ClientSession() as session:
            await eventually(lambda: status_is(session, port, 200), within=30, what="ready with NATS up")
            embedded_nats.stop()
            await eventually(lambda: status_is(session, port, 503), within=30, what="not ready, NATS down")
            embedded_nats.start()
            await eventually(lambda: status_is(session, port, 200), within=30, what="ready again")
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200  # alive all along: a restart would not bring NATS back
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-3000:]


async def test_sigterm_while_nats_is_down_exits_0_at_once(
    embedded_nats: EmbeddedNats, tmp_path: Path
) -> None:
    log = tmp_path / "engine.log"
    async with engine_process(embedded_nats.url, log, LLMSCOPE_SPC_LEASE_TTL_S="600") as (proc, port):
        async with aiohttp.ClientSession() as session:
            await eventually(lambda: status_is(session, port, 200), within=30, what="ready with NATS up")
            embedded_nats.stop()  # while the engine may still be taking its partitions
            await eventually(lambda: status_is(session, port, 503), within=30, what="not ready, NATS down")
        proc.send_signal(signal.SIGTERM)
        # Well within Kubernetes' 30 s grace period: no final snapshot, no lease release.
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


async def test_metrics_report_charting_violations_lag_and_dead_letters(
    nats_url: str, js: JetStreamContext, tmp_path: Path
) -> None:
    events = telemetry_stream(300, models=("m1", "m2"), shift_at=220)
    settings = SpcSettings(baseline_n=40)
    engine = Engine(config_for=lambda m: config_for(settings, m))
    expected: Counter[tuple[str, str, str]] = Counter()
    for seq, ev in enumerate(events, start=1):
        expected.update((v.rule, v.severity, v.state) for v in await engine.on_telemetry(ev, seq))
    assert expected  # the shift is detected: there is something to count

    log = tmp_path / "engine.log"
    samples: list[Sample] = []
    async with engine_process(nats_url, log, LLMSCOPE_SPC_BASELINE_N="40") as (proc, port):
        await publish_all(js, events)
        await js.publish(subjects.telemetry("ollama", "m1"), b"not telemetry")
        async with aiohttp.ClientSession() as session:

            async def charted() -> bool:
                nonlocal samples
                try:
                    samples = await scrape(session, f"http://127.0.0.1:{port}/metrics")
                except aiohttp.ClientConnectionError:
                    return False
                return (
                    total(samples, "llmscope_spc_telemetry_total") == len(events)
                    and total(samples, "llmscope_dead_letters_total") == 1
                    # Leases read and lag sampled every few seconds (the first time maybe before
                    # every partition was taken).
                    and len(values(samples, "llmscope_spc_partition_owner")) == 16
                    and len(values(samples, "llmscope_consumer_pending_messages")) == 16
                )

            await eventually(charted, within=60, what="every event charted, the bad one dead-lettered")
            got = Counter(
                {
                    (s.labels["rule"], s.labels["severity"], s.labels["state"]): int(s.value)
                    for s in samples
                    if s.name == "llmscope_spc_violations_total"
                }
            )
            assert got == expected
            assert total(samples, "llmscope_spc_batch_seconds_count") >= 1
            # m1 and m2, two prompts, three metrics: every chart past its 40 points is armed; the
            # availability chart of each model's target needs 200 probes and has 150.
            assert total(samples, "llmscope_spc_charts", metric="latency_ms", state="armed") == 4
            assert total(samples, "llmscope_spc_charts", state="armed") == 12
            assert values(samples, "llmscope_spc_charts", state="collecting") == [2]
            assert values(samples, "llmscope_spc_charts", metric="availability", state="collecting") == [2]
            assert values(samples, "llmscope_spc_partitions_held") == [16]
            assert values(samples, "llmscope_spc_partitions_unowned") == [0]
            lag = {s.labels["consumer"] for s in samples if s.name == "llmscope_consumer_pending_messages"}
            assert lag == {partition_durable(k) for k in range(16)}
            assert values(samples, "llmscope_build_info", service="spc-engine") == [1.0]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_partition_nobody_owns_is_logged_and_counted(nats_url: str, tmp_path: Path) -> None:
    """A member that announces itself but takes nothing (a wedged replica, here a ghost the test
    writes): its partitions have no owner, which the engine logs and counts; once the ghost stops
    announcing, the engine takes them and says so."""
    log = tmp_path / "engine.log"
    env = {"LLMSCOPE_SPC_PARTITIONS": "4", "LLMSCOPE_SPC_LEASE_TTL_S": "1"}
    nc = await nats.connect(nats_url)  # no streams made here: the engine makes them, 4 partitions
    js = nc.jetstream()
    members = await open_members(js, SpcSettings(lease_ttl_s=1.0))
    # Ranked after the engine ("0@<host>"): the ghost's share is partitions 1 and 3.
    ghost = Membership(js, members, MEMBERS_BUCKET, "zz-ghost@nowhere")
    haunting = True

    async def haunt() -> None:
        while haunting:
            await ghost.announce()
            await asyncio.sleep(0.2)

    haunt_task = asyncio.create_task(haunt())
    try:
        async with aiohttp.ClientSession() as session:

            async def unowned(port: int, n: int) -> bool:
                try:
                    samples = await scrape(session, f"http://127.0.0.1:{port}/metrics")
                except aiohttp.ClientConnectionError:
                    return False
                return values(samples, "llmscope_spc_partitions_unowned") == [n]

            async with engine_process(nats_url, log, **env) as (first, port):
                await eventually(lambda: unowned(port, 2), within=30, what="partitions 1 and 3 unowned")
                lines = [line for line in log.read_text().splitlines() if "partition has no owner" in line]
                assert [re.search(r"partition=(\d+)", line)[1] for line in lines] == ["1", "3"]  # type: ignore[index]
                assert all("lease=free" in line for line in lines)
                samples = await scrape(session, f"http://127.0.0.1:{port}/metrics")
                assert values(samples, "llmscope_spc_members") == [2]
                assert values(samples, "llmscope_spc_partitions_held") == [2]
                haunting = False
                await haunt_task
                await eventually(lambda: unowned(port, 0), within=30, what="every partition owned again")
                assert log.read_text().count("partition has an owner again") == 2
                samples = await scrape(session, f"http://127.0.0.1:{port}/metrics")
                assert values(samples, "llmscope_spc_partitions_held") == [4]
                assert values(samples, "llmscope_spc_members") == [1]
                assigned = [line for line in log.read_text().splitlines() if "partitions assigned" in line]
                assert "partitions=0,1,2,3" in assigned[-1]
                first.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(first.wait(), 30) == 0
    finally:
        haunting = False
        await haunt_task
        await nc.close()
