"""SPC engine settings, read once from the environment at start.

| variable | default | meaning |
| --- | --- | --- |
| NATS_URL and the stream variables | see ``llmscope.bus.settings`` | shared bus settings |
| LLMSCOPE_SPC_PARTITIONS | 16 | telemetry partitions (hash of provider/model), fixed for the stream's life |
| LLMSCOPE_SPC_REPLICAS | 1 | ignored: replicas find each other (kept so old configurations start) |
| LLMSCOPE_SPC_REPLICA | 0 | identity `<REPLICA>@<host>`: give replicas on one host distinct numbers |
| LLMSCOPE_SPC_LEASE_TTL_S | 10 | a partition whose holder stopped renewing is taken over after this |
| LLMSCOPE_SPC_BASELINE_N | 1000 | Phase I points per chart before limits freeze |
| LLMSCOPE_SPC_SIGMA_ESTIMATOR | sd | residual scale: sd (trimmed) or mr (moving range / 1.128) |
| LLMSCOPE_SPC_TOKENS_TRANSFORM | log | scale of the tokens_per_s charts: log or none |
| LLMSCOPE_SPC_CLEAR_AFTER | 10 | quiet points before an episode clears |
| LLMSCOPE_SPC_MIN_CHANGE | 0.5 | a sustained shift pages from (1 + this)x worse (1.5x slower); 0: any |
| LLMSCOPE_SPC_MIN_SPIKE_CHANGE | 1.0 | one answer pages from (1 + this)x worse (2x slower) |
| LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S | 1.0 | how often charts whose view changed are written for readers |
| LLMSCOPE_SPC_STATE_INTERVAL_S | 15 | least time between two chart state writes (a takeover replays since) |
| LLMSCOPE_SPC_STATE_EVENTS | 15000 | state written once this many events were charted since |
| LLMSCOPE_SPC_STATE_MAX_INTERVAL_S | 120 | ... or this long after, however few came |
| LLMSCOPE_SPC_CHARTS_BUCKET | llmscope_spc_charts | KV bucket of the charts as readers see them |
| LLMSCOPE_SPC_STATE_BUCKET | llmscope_spc_state | KV bucket of the engine's own chart state (for recovery) |
| LLMSCOPE_SPC_BATCH_SIZE | 256 | telemetry messages pulled per batch |
| LLMSCOPE_SPC_GATHER_MS | 500 | batches pulled this often (ms: violations wait up to it), 0: off |
| LLMSCOPE_SPC_TRAFFIC_MIN_REQUESTS | 10 | requests a traffic minute needs to be a chart point |
| LLMSCOPE_SPC_TRAFFIC_BASELINE_MINUTES | 1440 | traffic chart points before its limits freeze |
| LLMSCOPE_SPC_TRAFFIC_GRACE_S | 10 | a traffic minute closes this long after its end (late after) |
| LLMSCOPE_SPC_TRAFFIC_WINDOW_S | 60 | length of a traffic subgroup ("minute"); 300 suits a trickle |
| LLMSCOPE_SPC_TRAFFIC_PER_REQUEST | false | also chart each traffic request on its own (not like for like) |
| LLMSCOPE_SPC_HEALTH_PORT | 0 | port of /healthz, /readyz, /metrics (0: no server) |
| LLMSCOPE_SPC_HEALTH_HOST | 127.0.0.1 | address the health server binds |
| LLMSCOPE_LOG_LEVEL | INFO | log level |
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmscope.bus.settings import BusSettings
from llmscope.config.env import Env
from llmscope.proto import subjects
from llmscope.spc_engine.config import DEFAULT_BASELINE_N, DEFAULT_MIN_CHANGE, DEFAULT_MIN_SPIKE_CHANGE


@dataclass(frozen=True, slots=True)
class SpcSettings:
    """The SPC engine's settings (see the table above)."""

    bus: BusSettings = field(default_factory=BusSettings)
    partitions: int = 16
    replicas: int = 1
    replica: int = 0
    lease_ttl_s: float = 10.0
    members_bucket: str = subjects.SPC_MEMBERS_BUCKET
    baseline_n: int = DEFAULT_BASELINE_N
    sigma_estimator: str = "sd"
    tokens_transform: str = "log"
    clear_after: int = 10
    min_change: float = DEFAULT_MIN_CHANGE
    min_spike_change: float = DEFAULT_MIN_SPIKE_CHANGE
    snapshot_interval_s: float = 1.0
    state_interval_s: float = 15.0
    state_events: int = 15_000
    state_max_interval_s: float = 120.0
    charts_bucket: str = subjects.SPC_CHARTS_BUCKET
    state_bucket: str = subjects.SPC_STATE_BUCKET
    batch_size: int = 256
    gather_ms: int = 500
    traffic_min_requests: int = 10
    traffic_baseline_minutes: int = 1440
    traffic_grace_s: float = 10.0
    traffic_window_s: int = 60
    traffic_per_request: bool = False
    health_port: int = 0
    health_host: str = "127.0.0.1"
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Env | None = None) -> SpcSettings:
        env = env or Env()
        partitions = env.integer("LLMSCOPE_SPC_PARTITIONS", 16, min=1, max=1024)
        # Read (and validated) only so that old configurations still start: the replicas find
        # each other in the members bucket and share the partitions among themselves.
        replicas = env.integer("LLMSCOPE_SPC_REPLICAS", 1, min=1, max=1024)
        replica = env.integer("LLMSCOPE_SPC_REPLICA", 0, min=0)
        return cls(
            bus=BusSettings.from_env(env),
            partitions=partitions,
            replicas=replicas,
            replica=replica,
            lease_ttl_s=env.number("LLMSCOPE_SPC_LEASE_TTL_S", 10.0, min=0.5),
            baseline_n=env.integer("LLMSCOPE_SPC_BASELINE_N", DEFAULT_BASELINE_N, min=2),
            sigma_estimator=env.choice("LLMSCOPE_SPC_SIGMA_ESTIMATOR", "sd", ("sd", "mr")),
            tokens_transform=env.choice("LLMSCOPE_SPC_TOKENS_TRANSFORM", "log", ("log", "none")),
            clear_after=env.integer("LLMSCOPE_SPC_CLEAR_AFTER", 10, min=1),
            min_change=env.number("LLMSCOPE_SPC_MIN_CHANGE", DEFAULT_MIN_CHANGE, min=0, max=100),
            min_spike_change=env.number(
                "LLMSCOPE_SPC_MIN_SPIKE_CHANGE", DEFAULT_MIN_SPIKE_CHANGE, min=0, max=100
            ),
            snapshot_interval_s=env.number("LLMSCOPE_SPC_SNAPSHOT_INTERVAL_S", 1.0, min=0),
            state_interval_s=env.number("LLMSCOPE_SPC_STATE_INTERVAL_S", 15.0, min=0),
            state_events=env.integer("LLMSCOPE_SPC_STATE_EVENTS", 15_000, min=1),
            state_max_interval_s=env.number("LLMSCOPE_SPC_STATE_MAX_INTERVAL_S", 120.0, min=0),
            charts_bucket=env.text("LLMSCOPE_SPC_CHARTS_BUCKET", subjects.SPC_CHARTS_BUCKET),
            state_bucket=env.text("LLMSCOPE_SPC_STATE_BUCKET", subjects.SPC_STATE_BUCKET),
            batch_size=env.integer("LLMSCOPE_SPC_BATCH_SIZE", 256, min=1, max=10_000),
            gather_ms=env.integer("LLMSCOPE_SPC_GATHER_MS", 500, min=0, max=5_000),
            traffic_min_requests=env.integer("LLMSCOPE_SPC_TRAFFIC_MIN_REQUESTS", 10, min=1),
            traffic_baseline_minutes=env.integer("LLMSCOPE_SPC_TRAFFIC_BASELINE_MINUTES", 1440, min=5),
            traffic_grace_s=env.number("LLMSCOPE_SPC_TRAFFIC_GRACE_S", 10.0, min=0),
            traffic_window_s=env.integer("LLMSCOPE_SPC_TRAFFIC_WINDOW_S", 60, min=1, max=3600),
            traffic_per_request=env.flag("LLMSCOPE_SPC_TRAFFIC_PER_REQUEST", False),
            health_port=env.integer("LLMSCOPE_SPC_HEALTH_PORT", 0, min=0, max=65535),
            health_host=env.text("LLMSCOPE_SPC_HEALTH_HOST", "127.0.0.1"),
            log_level=env.choice("LLMSCOPE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        )
