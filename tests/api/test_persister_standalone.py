"""The standalone persister (``python -m llmscope.api.persister``) beside API processes with
``LLMSCOPE_PERSISTER=false``: their tabs get the live updates an in-process persister gives them,
and it serves its metrics (real nats-server, Postgres, uvicorn on a socket)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.persister import run_standalone
from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from llmscope.bus.publisher import Publisher
from llmscope.proto import subjects
from llmscope.proto.charts import chart_key
from llmscope.stack.ports import free_port
from llmscope.web.live import point_event, traffic_event
from tests.alerter.harness import eventually
from tests.api.factories import telemetry
from tests.api.test_live import WAIT_S, chart_record, frames, next_frame, signed_in


@contextlib.asynccontextmanager
async def standalone(settings: ApiSettings) -> AsyncIterator[asyncio.Task[None]]:
    """``run_standalone`` as ``main`` runs it, stopped (and awaited) at the end."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_standalone(settings, stop), name="standalone-persister")
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def test_api_tabs_get_live_updates_from_a_standalone_persister(settings: ApiSettings, nc: NATS) -> None:
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    key = chart_key("openai", "solo-traffic", "svc", "traffic:chat", "traffic_error_rate")
    probe = telemetry(11, id="solo-point-11", model="solo-model")
    name = point_event(probe.provider, "solo-model")
    api = dataclasses.replace(settings, host="127.0.0.1", port=0, persister=False)
    persister = dataclasses.replace(settings, persister=False, persister_health_port=0)
    publisher = Publisher(nc.jetstream())
    async with (
        run_api(api) as url,
        signed_in(url) as browser,
        browser.stream("GET", "/events") as response,
    ):
        stream = frames(response.aiter_lines())
        await next_frame(stream, ":")  # subscribed: what is published from now on arrives
        async with standalone(persister) as task:
            await publisher.publish(subjects.telemetry(probe.provider, probe.model), probe)
            seen = await next_frame(stream, name)
            assert json.loads(seen.data) == {
                "provider": probe.provider,
                "model": "solo-model",
                "ts": probe.ts.isoformat(),
            }
            # The notice follows the commit: the chart that re-reads on it finds the probe.
            conn = await asyncpg.connect(settings.database_url.get())
            try:
                assert await conn.fetchval("SELECT count(*) FROM telemetry WHERE id = $1", probe.id) == 1
            finally:
                await conn.close()
            await kv.put(key, chart_record(key, traffic=True))
            traffic = await next_frame(stream, traffic_event(key))
            assert json.loads(traffic.data) == {"chart": key}
            assert json.loads((await next_frame(stream, "traffic")).data) == {"chart": key}
            assert not task.done()


async def test_a_standalone_persister_serves_its_metrics(settings: ApiSettings, nc: NATS) -> None:
    port = free_port()
    persister = dataclasses.replace(settings, persister_health_host="127.0.0.1", persister_health_port=port)
    probe = telemetry(12, id="solo-point-12", model="solo-metrics")
    stored = 'llmscope_persister_events_total{kind="telemetry"} 1.0'
    async with (
        standalone(persister) as task,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as scraper,
    ):

        async def poll_until(path: str, line: str) -> str:
            # Polls, as a Prometheus server or a readiness probe does.
            while True:
                assert not task.done(), task
                with contextlib.suppress(httpx.TransportError):  # the server may not listen yet
                    r = await scraper.get(path)
                    if r.status_code == 200 and line in r.text:
                        return r.text
                await asyncio.sleep(0.05)

        # Ready (200, not 503) once its streams are in place: it may wait for NATS and Postgres.
        await asyncio.wait_for(poll_until("/readyz", "ready"), WAIT_S)
        await Publisher(nc.jetstream()).publish(subjects.telemetry(probe.provider, probe.model), probe)
        body = await asyncio.wait_for(poll_until("/metrics", stored), WAIT_S)
        assert r'service="persister"' in body
        assert 'llmscope_persister_batches_total{kind="telemetry"}' in body
        assert (await scraper.get("/healthz")).status_code == 200


async def test_python_m_persister_serves_metrics_on_its_env_port_and_exits_0_on_sigterm(
    settings: ApiSettings, tmp_path: Path
) -> None:
    """``main`` as deployed: the port from LLMSCOPE_PERSISTER_HEALTH_PORT, no API key needed."""
    port = free_port()
    environ = {
        **os.environ,
        "DATABASE_URL": settings.database_url.get(),
        "NATS_URL": settings.bus.nats_url,
        "LLMSCOPE_PERSISTER_HEALTH_PORT": str(port),
    }
    environ.pop("LLMSCOPE_API_KEY", None)
    log = tmp_path / "persister.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmscope.api.persister", env=environ, stdout=out, stderr=out
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as scraper:

            async def ready() -> bool:
                assert proc.returncode is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    return (await scraper.get("/readyz")).status_code == 200
                return False

            await eventually(ready, within=WAIT_S, what="the standalone persister ready")
            body = (await scraper.get("/metrics")).text
            build = [line for line in body.splitlines() if line.startswith("llmscope_build_info{")]
            assert len(build) == 1, body
            assert 'service="persister"' in build[0]
            assert "# TYPE llmscope_persister_events_total counter" in body
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0, log.read_text()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
