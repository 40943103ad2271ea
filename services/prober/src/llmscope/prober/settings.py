"""Prober settings, read once from the environment and validated at start.

| variable | default | meaning |
| --- | --- | --- |
| LLMSCOPE_PROBER_CONFIG | (none) | TOML or YAML file of targets and prompts (see targets.py) |
| LLMSCOPE_TARGETS | (none) | compact targets ``KIND,BASE_URL,MODEL[,key=value...];...`` |
| LLMSCOPE_SIM_URL | http://127.0.0.1:SIM_PORT | the simulator probed when neither of the two above is set |
| LLMSCOPE_SIM_MODELS | all four | simulated models probed then (specs as for ``llmscope sim``) |
| LLMSCOPE_PROBER_INTERVAL_S | 2.0 | default seconds between probes of one target |
| LLMSCOPE_PROBER_JITTER | 0.1 | default random spread of the interval (0.1 = +-10 %) |
| LLMSCOPE_PROBER_TIMEOUT_S | 30 | default probe timeout, seconds |
| LLMSCOPE_PROBER_STREAMING | true | default streaming mode (streaming measures time to first token) |
| LLMSCOPE_PROBER_CONCURRENCY | 4 | probes in flight at once, over all targets |
| LLMSCOPE_PROBER_INCLUDE_PROMPT_TEXT | false | add the prompt text to telemetry (its hash is always sent) |
| LLMSCOPE_PROBER_OUTBOX_SIZE | 10000 | telemetry kept while NATS is away; the oldest is dropped beyond |
| LLMSCOPE_PROBER_OUTBOX_DIR | (none; up: DATA_DIR/prober) | outbox also in a file there: survives a kill |
| LLMSCOPE_PROBER_PUBLISH_LINGER_MS | 20 | ms an event finding the outbox empty waits for company; 0: none |
| LLMSCOPE_PROBER_ID | host name | id of this prober in telemetry |
| LLMSCOPE_PROBER_HEALTH_HOST | 127.0.0.1 | address of /healthz, /readyz and /metrics |
| LLMSCOPE_PROBER_HEALTH_PORT | 8001 | their port; 0 disables the server |
| LLMSCOPE_PROBER_MANAGE_STREAMS | LLMSCOPE_MANAGE_STREAMS | false: publish once setup made the streams |
| LLMSCOPE_LOG_LEVEL | INFO | log level |
| NATS_URL and stream limits | see llmscope.bus.settings | |

API keys are read from the variables the targets name in ``api_key_env``; they are kept as
:class:`~llmscope.config.env.Secret` and never logged.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from llmscope.bus.settings import BusSettings
from llmscope.config.env import ConfigError, Env
from llmscope.prober.prompts import DEFAULT_PROMPTS
from llmscope.prober.targets import (
    Target,
    TargetDefaults,
    check_unique,
    load_file,
    parse_targets_spec,
    simulator_targets,
)
from llmscope.simulator.models import DEFAULT_MODELS
from llmscope.simulator.settings import parse_models, sim_url

PUBLISH_LINGER_MS = 20.0
"""The outbox's linger (Outbox ``linger``): at most this much later on the bus, a probe that took
seconds; in return a prober of 100 probes a second publishes in bursts of about two, and every
service downstream pays its per-wake-up costs once a burst (README, Benchmarks)."""


@dataclass(frozen=True, slots=True)
class ProberSettings:
    targets: tuple[Target, ...]
    source: str
    """Where the targets came from: file, env, file+env or simulator."""
    concurrency: int = 4
    include_prompt_text: bool = False
    outbox_size: int = 10_000
    outbox_dir: Path | None = None
    """Where the outbox's journal lives; None: in memory only."""
    publish_linger_ms: float = PUBLISH_LINGER_MS
    """How long an event that finds the outbox empty waits for others to be published with it."""
    prober_id: str = "prober"
    health_host: str = "127.0.0.1"
    health_port: int = 8001
    manage_streams: bool = True
    """Create and update the streams (false: a NATS user allowed only to publish telemetry)."""
    log_level: str = "INFO"
    bus: BusSettings = field(default_factory=BusSettings)

    @classmethod
    def from_env(cls, env: Env | None = None, *, config_path: Path | None = None) -> ProberSettings:
        env = env or Env()
        bus = BusSettings.from_env(env)
        defaults = TargetDefaults(
            interval_s=env.number("LLMSCOPE_PROBER_INTERVAL_S", 2.0, min=0.01, max=86400),
            jitter=env.number("LLMSCOPE_PROBER_JITTER", 0.1, min=0, max=0.99),
            timeout_s=env.number("LLMSCOPE_PROBER_TIMEOUT_S", 30.0, min=0.01, max=86400),
            streaming=env.flag("LLMSCOPE_PROBER_STREAMING", True),
        )
        variable = "--config" if config_path is not None else "LLMSCOPE_PROBER_CONFIG"
        path_text = env.optional_text("LLMSCOPE_PROBER_CONFIG")
        path = config_path or (Path(path_text) if path_text else None)
        targets: list[Target] = []
        prompts = DEFAULT_PROMPTS
        sources: list[str] = []
        if path is not None:
            file_targets, prompts = load_file(path, defaults=defaults, env=env, variable=variable)
            targets += file_targets
            sources.append("file")
        spec = env.optional_text("LLMSCOPE_TARGETS")
        if spec is not None:
            targets += parse_targets_spec(spec, defaults=defaults, prompts=prompts, env=env)
            sources.append("env")
        if not sources:
            # The simulator and the prober read the same model list, so they always agree.
            specs = env.raw("LLMSCOPE_SIM_MODELS")
            models = DEFAULT_MODELS if specs is None else parse_models(specs.split(), "LLMSCOPE_SIM_MODELS")
            targets = simulator_targets(sim_url(env), defaults=defaults, prompts=prompts, models=models)
            sources.append("simulator")
        if not targets:
            raise ConfigError(f"{variable}: the configuration defines no targets")
        check_unique(targets)
        return cls(
            targets=tuple(targets),
            source="+".join(sources),
            concurrency=env.integer("LLMSCOPE_PROBER_CONCURRENCY", 4, min=1, max=1024),
            include_prompt_text=env.flag("LLMSCOPE_PROBER_INCLUDE_PROMPT_TEXT", False),
            outbox_size=env.integer("LLMSCOPE_PROBER_OUTBOX_SIZE", 10_000, min=1, max=10_000_000),
            outbox_dir=Path(d) if (d := env.optional_text("LLMSCOPE_PROBER_OUTBOX_DIR")) else None,
            publish_linger_ms=env.number(
                "LLMSCOPE_PROBER_PUBLISH_LINGER_MS", PUBLISH_LINGER_MS, min=0, max=1000
            ),
            prober_id=env.text("LLMSCOPE_PROBER_ID", socket.gethostname() or "prober")[:256],
            health_host=env.text("LLMSCOPE_PROBER_HEALTH_HOST", "127.0.0.1"),
            health_port=env.integer("LLMSCOPE_PROBER_HEALTH_PORT", 8001, min=0, max=65535),
            manage_streams=env.flag("LLMSCOPE_PROBER_MANAGE_STREAMS", bus.manage_streams),
            log_level=env.choice("LLMSCOPE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            bus=bus,
        )
