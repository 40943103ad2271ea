"""``llmscope sim inject`` before the charts have armed: it warns, naming the charts still
collecting and how far (n/N), and says what to do; it injects all the same.

The real API (uvicorn on a free port) serves the engine's chart records from its KV bucket; the
simulator runs in a child process (tests.simulator.test_main)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import uvicorn
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from llmscope.api.settings import ApiSettings
from llmscope.config.env import Env
from llmscope.proto.charts import ChartMeta, ChartRecord, ChartView, chart_key
from llmscope.simulator.__main__ import main
from llmscope.stack.ports import free_port
from tests.api.conftest import API_KEY, Api
from tests.api.engine import eventually
from tests.simulator.test_main import sim_process

__all__ = ["sim_process"]  # the fixture, used by name


@pytest.fixture
async def api_url(api: Api) -> AsyncIterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(api.app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, within=20, what="uvicorn to listen")
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


async def _chart(nc: NATS, settings: ApiSettings, model: str, metric: str, phase: str, progress: int) -> str:
    key = chart_key("ollama", model, "local", "simple-1", metric)
    meta = ChartMeta(
        provider="ollama", model=model, target="local", prompt_id="simple-1", metric=metric, host="sim-gpu-1"
    )
    view = ChartView(phase=phase, progress=progress, baseline_n=30)  # type: ignore[arg-type]
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=settings.charts_bucket))
    await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta, view=view)))
    return key


async def test_inject_into_charts_still_collecting_warns_and_injects(
    api_url: str, sim_process: str, nc: NATS, settings: ApiSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    latency = await _chart(nc, settings, "llama3.1:8b", "latency_ms", "collecting", 12)
    ttft = await _chart(nc, settings, "llama3.1:8b", "ttft_ms", "collecting", 29)
    await _chart(nc, settings, "qwen2.5:7b", "latency_ms", "collecting", 3)  # another model: not named
    env = Env(
        {"LLMSCOPE_SIM_URL": sim_process, "LLMSCOPE_SIM_API_URL": api_url, "LLMSCOPE_SIM_API_KEY": API_KEY}
    )
    args = ["inject", "shift", "--model", "llama3.1:8b", "--factor", "2"]
    assert await asyncio.to_thread(main, args, env) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["anomaly"]["kind"] == "shift"  # injected all the same
    assert "warning: 2 chart(s) of model llama3.1:8b are still collecting their baseline" in out.err
    assert f"{latency} 12/30" in out.err
    assert f"{ttft} 29/30" in out.err
    assert "qwen2.5" not in out.err
    assert "Wait until they are armed" in out.err
    assert "re-baseline them once the anomaly has ended" in out.err
    # Armed: nothing to say.
    await _chart(nc, settings, "llama3.1:8b", "latency_ms", "armed", 30)
    await _chart(nc, settings, "llama3.1:8b", "ttft_ms", "armed", 30)
    assert await asyncio.to_thread(main, args, env) == 0
    assert capsys.readouterr().err == ""
    # The API cannot be asked: a note, and the inject still goes.
    away = Env(
        {
            "LLMSCOPE_SIM_URL": sim_process,
            "LLMSCOPE_SIM_API_URL": f"http://127.0.0.1:{free_port()}",
            "LLMSCOPE_SIM_API_KEY": API_KEY,
        }
    )
    assert await asyncio.to_thread(main, args, away) == 0
    out = capsys.readouterr()
    assert "not checked whether the charts of model llama3.1:8b have armed: cannot reach the API" in out.err
    assert json.loads(out.out)["anomaly"]["kind"] == "shift"


async def test_inject_reads_the_key_llmscope_up_keeps_in_the_data_directory(
    api_url: str,
    sim_process: str,
    nc: NATS,
    settings: ApiSettings,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # No key in the environment, as in a terminal beside `llmscope up`: its data directory has one.
    latency = await _chart(nc, settings, "llama3.1:8b", "latency_ms", "collecting", 12)
    (tmp_path / "api_key").write_text(API_KEY + "\n")
    env = Env(
        {"LLMSCOPE_SIM_URL": sim_process, "LLMSCOPE_SIM_API_URL": api_url, "LLMSCOPE_DATA_DIR": str(tmp_path)}
    )
    args = ["inject", "shift", "--model", "llama3.1:8b", "--factor", "2"]
    assert await asyncio.to_thread(main, args, env) == 0
    out = capsys.readouterr()
    assert "not checked" not in out.err
    assert f"{latency} 12/30" in out.err
