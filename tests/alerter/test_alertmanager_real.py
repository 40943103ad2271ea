"""The alerter against a real Prometheus Alertmanager (Debian's ``prometheus-alertmanager``,
installed by ``.ci/system-packages``; the test skips without it): Alertmanager accepts the
firing alert with the violation's labels, routes it to its own webhook receiver, and notifies the
resolution once the alerter sends ``endsAt``."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js import JetStreamContext

from llmscope.stack.ports import free_ports
from tests.alerter.factories import HttpSink, cleared, violation
from tests.alerter.harness import eventually, publish, start_alerter

BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no alertmanager binary (apt: prometheus-alertmanager)"
)

CONFIG = """
route:
  receiver: team
  group_by: [incident]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: team
    webhook_configs:
      - url: {url}
        send_resolved: true
"""


@dataclass
class RealAlertmanager:
    url: str
    team: HttpSink
    """Alertmanager's webhook receiver: what the team's routing delivers"""

    def notifications(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body, _ in self.team.requests]


@pytest.fixture
async def alertmanager(tmp_path: Path) -> AsyncIterator[RealAlertmanager]:
    assert BINARY is not None
    team = HttpSink()
    await team.start()
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG.format(url=team.url + "/team"))
    (port,) = free_ports(1)
    proc = await asyncio.create_subprocess_exec(
        BINARY,
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # one instance, no gossip
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                try:
                    async with session.get(url + "/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, within=30, what="Alertmanager ready")
        yield RealAlertmanager(url, team)
    finally:
        proc.terminate()
        await proc.wait()
        await team.stop()


async def test_a_real_alertmanager_routes_the_firing_alert_and_its_resolution(
    database_url: str, js: JetStreamContext, alertmanager: RealAlertmanager
) -> None:
    run = await start_alerter(database_url, js, {"LLMSCOPE_ALERTMANAGER_URL": alertmanager.url})
    try:
        ev = violation(1, model="llama3.1:8b", rule="CUSUM")
        await publish(js, ev)

        def with_status(status: str) -> list[dict[str, Any]]:
            return [n for n in alertmanager.notifications() if n["status"] == status]

        await eventually(
            lambda: bool(with_status("firing")), within=30, what="Alertmanager's firing notification"
        )
        incident = await run.pool.fetchval("SELECT id FROM alerter_incidents")
        (alert,) = with_status("firing")[0]["alerts"]
        assert alert["labels"] == {
            "alertname": "LLMscopeViolation",
            "provider": "ollama",
            "model": "llama3.1:8b",
            "prompt": "simple-1",
            "metric": "latency_ms",
            "rule": "CUSUM",
            "severity": "critical",
            "host": "gpu-1",
            "incident": incident,
        }
        assert alert["annotations"]["incident_url"] == f"http://scope.test/incidents/{incident}"
        assert alert["generatorURL"].startswith("http://scope.test/?provider=ollama")

        done = cleared(ev)
        await publish(js, done)
        await eventually(lambda: bool(with_status("resolved")), within=30, what="the resolved notification")
        (gone,) = with_status("resolved")[0]["alerts"]
        assert gone["labels"] == alert["labels"]  # the same alert ended, not a new one
        assert gone["endsAt"].startswith(done.ts.strftime("%Y-%m-%dT%H:%M:%S"))
    finally:
        await run.close()
