"""A real simulator on a free 127.0.0.1 port for tests, with fast models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from llmscope.simulator.engine import Simulator
from llmscope.simulator.models import SimModel
from llmscope.simulator.server import SimServer

FAST_MODELS: tuple[SimModel, ...] = (
    SimModel(
        name="fast-a:1b",
        host="gpu-t",
        tokens_per_s=400,
        prompt_tokens_per_s=4000,
        overhead_s=0.005,
        sigma=0.05,
    ),
    SimModel(
        name="fast-b:1b",
        host="gpu-t",
        tokens_per_s=400,
        prompt_tokens_per_s=4000,
        overhead_s=0.005,
        sigma=0.05,
    ),
    SimModel(
        name="fast-c",
        host="elsewhere",
        flavour="openai",
        tokens_per_s=400,
        prompt_tokens_per_s=4000,
        overhead_s=0.005,
    ),
)


@asynccontextmanager
async def running_sim(
    models: Sequence[SimModel] = FAST_MODELS, *, seed: int | None = 7, time_scale: float = 1.0
) -> AsyncIterator[SimServer]:
    server = SimServer(Simulator(models, seed=seed, time_scale=time_scale))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
