"""``python -m llmscope.prober`` as a process: probes, publishes, serves metrics, stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import pytest
from nats.js import JetStreamContext

from llmscope.config.env import Env
from llmscope.prober.__main__ import main
from llmscope.proto import codec, subjects
from llmscope.proto.telemetry import TelemetryEvent
from llmscope.stack.ports import free_port
from tests.scrape import scrape, total, values
from tests.simulator.harness import running_sim


async def test_runs_publishes_serves_metrics_and_stops_cleanly(nats_url: str, js: JetStreamContext) -> None:
    health_port = free_port()
    async with running_sim() as sim:
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "LLMSCOPE_TARGETS": f"ollama,{sim.url},fast-a:1b;openai,{sim.url}/v1,fast-c,streaming=false",
            "LLMSCOPE_PROBER_INTERVAL_S": "0.1",
            "LLMSCOPE_PROBER_HEALTH_PORT": str(health_port),
            "LLMSCOPE_PROBER_ID": "proc-prober",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmscope.prober", env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            sub = await js.subscribe(subjects.TELEMETRY_ALL, ordered_consumer=True)
            seen: set[str] = set()
            async with asyncio.timeout(20):
                while seen != {"ollama/fast-a:1b", "openai/fast-c"}:
                    msg = await sub.next_msg(timeout=20)
                    event = codec.decode_as(msg.data, TelemetryEvent)
                    assert event.prober == "proc-prober"
                    assert event.status == "ok", event.error
                    seen.add(event.target)
            async with aiohttp.ClientSession() as session:
                base = f"http://127.0.0.1:{health_port}"
                async with session.get(f"{base}/readyz") as resp:
                    assert resp.status == 200
                samples = await scrape(session, f"{base}/metrics")
            ok = {"model": "fast-a:1b", "provider": "ollama", "status": "ok"}
            assert total(samples, "llmscope_prober_probes_total", **ok) >= 1
            # GenAI client metrics: streaming Ollama /api/generate has a TTFT, OpenAI unary has none.
            ollama = {"gen_ai_provider_name": "ollama", "gen_ai_request_model": "fast-a:1b"}
            duration = "gen_ai_client_operation_duration_seconds_count"
            assert total(samples, duration, gen_ai_operation_name="text_completion", **ollama) >= 1
            assert total(samples, duration, gen_ai_operation_name="chat", gen_ai_provider_name="openai") >= 1
            ttft = "gen_ai_client_operation_time_to_first_chunk_seconds_count"
            assert total(samples, ttft, **ollama) >= 1
            assert values(samples, ttft, gen_ai_provider_name="openai") == []
            assert values(samples, "llmscope_build_info", service="prober") == [1.0]
            assert total(samples, "process_resident_memory_bytes") > 0
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.stderr is not None
        log = (await proc.stderr.read()).decode()
        assert "stopped" in log


def test_configuration_errors_exit_2_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], env=Env({"LLMSCOPE_PROBER_TIMEOUT_S": "-1"})) == 2
    assert "LLMSCOPE_PROBER_TIMEOUT_S" in capsys.readouterr().err
    assert main(["--config", "/nonexistent/p.toml"], env=Env({})) == 2
    assert "--config" in capsys.readouterr().err


def test_api_keys_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    env = Env(
        {"LLMSCOPE_TARGETS": f"openai,http://127.0.0.1:{free_port()}/v1,m,api_key_env=K", "K": "sk-TOPSECRET"}
    )
    assert main(["--once"], env=env) == 1  # the endpoint refuses: one failed probe per prompt
    out = capsys.readouterr()
    assert "sk-TOPSECRET" not in out.out + out.err
    assert '"status":"refused"' in out.out
