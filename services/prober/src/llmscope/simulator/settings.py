"""Simulator settings, read once from the environment (command-line flags override them).

| variable | default | meaning |
| --- | --- | --- |
| LLMSCOPE_SIM_HOST | 127.0.0.1 | address the simulator listens on |
| LLMSCOPE_SIM_PORT | 11500 | port it listens on (not Ollama's 11434, so both can run) |
| LLMSCOPE_SIM_SEED | (random) | integer seed: same seed, same latencies and texts |
| LLMSCOPE_SIM_TIME_SCALE | 1.0 | multiplies every simulated duration (0.05: twenty times faster) |
| LLMSCOPE_SIM_MODELS | llama3.1:8b qwen2.5:7b gpt-4o-mini claude-3-5-haiku | ``NAME@HOST[;k=v...]`` specs |
| LLMSCOPE_SIM_URL | http://127.0.0.1:SIM_PORT | where ``sim inject`` and the prober's default targets go |
| LLMSCOPE_SIM_API_URL | http://127.0.0.1:8000 | the API ``sim inject`` asks whether its charts have armed |
| LLMSCOPE_SIM_API_KEY | (LLMSCOPE_READ_KEY, LLMSCOPE_API_KEY, DATA_DIR/api_key) | key to read charts with |
| LLMSCOPE_DATA_DIR | ./.llmscope | ``llmscope up``'s data directory, whose ``api_key`` ``sim inject`` reads |
| LLMSCOPE_SIM_TRAFFIC_RPS | 0 | mean requests/s of simulated traffic traced to LLMscope over OTLP (0: none) |
| LLMSCOPE_SIM_TRAFFIC_OTLP_URL | http://127.0.0.1:8000/v1/traces | where the simulated traffic's spans go |
| LLMSCOPE_SIM_TRAFFIC_KEY | (LLMSCOPE_INGEST_KEY) | ingest key the simulated traffic sends |
| LLMSCOPE_SIM_TRAFFIC_SERVICES | checkout support-bot | ``service.name`` of the simulated applications |
| LLMSCOPE_LOG_LEVEL | INFO | log level |

Default models: ``llama3.1:8b`` and ``qwen2.5:7b`` on host ``sim-gpu-1`` (Ollama-like, with a
cold-start load), ``gpt-4o-mini`` on ``sim-openai`` and ``claude-3-5-haiku`` on ``sim-anthropic``.
Every model answers on all three APIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmscope.config.env import ConfigError, Env
from llmscope.simulator.models import DEFAULT_MODELS, SimModel, parse_model_spec
from llmscope.simulator.traffic import TrafficSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11500
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def parse_models(specs: list[str] | tuple[str, ...], variable: str) -> tuple[SimModel, ...]:
    """Parse model specs; a bad one raises ConfigError naming ``variable``."""
    try:
        models = tuple(parse_model_spec(spec) for spec in specs)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}") from None
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError(f"{variable}: a model name appears twice in {names}")
    return models


@dataclass(frozen=True, slots=True)
class SimSettings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    seed: int | None = None
    time_scale: float = 1.0
    models: tuple[SimModel, ...] = DEFAULT_MODELS
    log_level: str = "INFO"
    traffic: TrafficSettings = field(default_factory=TrafficSettings)
    """Simulated application traffic traced over OTLP (:mod:`llmscope.simulator.traffic`)."""

    @classmethod
    def from_env(cls, env: Env | None = None) -> SimSettings:
        env = env or Env()
        seed_raw = env.raw("LLMSCOPE_SIM_SEED")
        seed = None if seed_raw is None else env.integer("LLMSCOPE_SIM_SEED", 0, min=0)
        specs = env.raw("LLMSCOPE_SIM_MODELS")
        return cls(
            host=env.text("LLMSCOPE_SIM_HOST", DEFAULT_HOST),
            port=env.integer("LLMSCOPE_SIM_PORT", DEFAULT_PORT, min=0, max=65535),
            seed=seed,
            time_scale=env.number("LLMSCOPE_SIM_TIME_SCALE", 1.0, min=1e-4, max=1000),
            models=DEFAULT_MODELS if specs is None else parse_models(specs.split(), "LLMSCOPE_SIM_MODELS"),
            log_level=env.choice("LLMSCOPE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            traffic=TrafficSettings.from_env(env),
        )


def sim_url(env: Env | None = None) -> str:
    """The simulator's base URL from LLMSCOPE_SIM_URL, else on loopback at LLMSCOPE_SIM_PORT."""
    env = env or Env()
    # The port ``up`` and ``sim serve`` listen on: a shell that moved the simulator off 11500
    # must not steer (or probe) whichever simulator still answers there.
    port = env.integer("LLMSCOPE_SIM_PORT", DEFAULT_PORT, min=0, max=65535)
    default = f"http://{DEFAULT_HOST}:{port or DEFAULT_PORT}"  # 0: a port chosen at start, unknown here
    url = env.url("LLMSCOPE_SIM_URL", default, schemes=("http", "https"))
    return (url or default).rstrip("/")
