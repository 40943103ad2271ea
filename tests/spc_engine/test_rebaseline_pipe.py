"""``llmscope spc rebaseline --list | head``: a reader that goes away is no NATS problem."""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig

from llmscope.proto import subjects
from llmscope.proto.charts import ChartMeta, ChartRecord, chart_key


async def test_list_into_a_closed_pipe_ends_quietly_with_141(nats_url: str, js: JetStreamContext) -> None:
    kv = await js.create_key_value(KeyValueConfig(bucket=subjects.SPC_CHARTS_BUCKET))
    for model in ("m1", "m2"):
        key = chart_key("ollama", model, f"t-{model}", "simple", "latency_ms")
        meta = ChartMeta(
            provider="ollama", model=model, target=f"t-{model}", prompt_id="simple", metric="latency_ms"
        )
        await kv.put(key, msgspec.json.encode(ChartRecord(key=key, meta=meta)))

    # The reader is gone before the first line is written: deterministic, unlike `| head -1`.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llmscope.stack.cli",
            "spc",
            "rebaseline",
            "--list",
            "--nats-url",
            nats_url,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert err.decode() == ""
    assert proc.returncode == 141
