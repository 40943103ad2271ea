"""Settings of the API service, read from the environment once at start.

| variable | default | meaning |
| --- | --- | --- |
| LLMSCOPE_HOST | 127.0.0.1 | address the API and dashboard listen on |
| LLMSCOPE_PORT | 8000 | port the API and dashboard listen on |
| DATABASE_URL | (required) | PostgreSQL URL, ``postgres://`` or ``postgresql://`` |
| LLMSCOPE_API_KEY | (required) | admin key: every route and the dashboard, 16 characters or more |
| LLMSCOPE_READ_KEY | (unset) | read-only key: GET routes, dashboard viewing (unset: off); 16+ characters |
| LLMSCOPE_INGEST_KEY | (unset) | ingest-only key: POST /api/stats, OTLP /v1/traces (unset: receiver off) |
| LLMSCOPE_OTLP_INGEST_KEY | (unset) | older name of LLMSCOPE_INGEST_KEY, read when that is unset |
| LLMSCOPE_AUTH_FAILURES | 10 | failed authentications a client address may make before 429 (0: no limit) |
| LLMSCOPE_AUTH_FAILURE_WINDOW_S | 60 | seconds in which that many failures are forgiven again |
| LLMSCOPE_PERSISTER | true | run the persister (telemetry/violations/dead letters -> Postgres) in-process |
| LLMSCOPE_PERSISTER_HEALTH_HOST | 127.0.0.1 | standalone persister: address of /healthz, /readyz, /metrics |
| LLMSCOPE_PERSISTER_HEALTH_PORT | 8004 | standalone persister: their port (0: no server) |
| LLMSCOPE_DB_POOL_MIN | 1 | smallest asyncpg pool size |
| LLMSCOPE_DB_POOL_MAX | 10 | largest asyncpg pool size |
| LLMSCOPE_DB_STATEMENT_TIMEOUT_S | 30 | longest a query may run (then 503 on the API); 0: no limit |
| LLMSCOPE_PERSIST_BATCH | 2000 | messages the persister takes per batch (one transaction) |
| LLMSCOPE_RETENTION_TELEMETRY_DAYS | 30 | days raw telemetry is kept (0: forever) |
| LLMSCOPE_RETENTION_ROLLUP_DAYS | 400 | days hourly (and minute) rollups are kept (0: forever) |
| LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS | (unset) | days minute rollups are kept, 7+ (unset: as hourly) |
| LLMSCOPE_RETENTION_VIOLATIONS_DAYS | 0 | days violations, and resolved incidents, are kept (0: forever) |
| LLMSCOPE_RETENTION_DEADLETTER_DAYS | 30 | days stored dead letters are kept (0: forever) |
| LLMSCOPE_SPC_CHARTS_BUCKET | llmscope_spc_charts | KV bucket of the SPC engine's charts (as the engine's) |
| LLMSCOPE_SPC_REQUEST_TIMEOUT_S | 5 | how long a re-baseline request waits for the SPC engine's answer |
| LLMSCOPE_REFRESH_S | 2 | dashboard auto-refresh interval, seconds |
| LLMSCOPE_SESSION_DAYS | 7 | lifetime of a dashboard login |
| LLMSCOPE_MAX_BODY_BYTES | 4194304 | largest body (413 beyond), checked before reading; OTLP: gunzipped too |
| LLMSCOPE_ALERT_ALLOWED_HOSTS | (none) | non-public hosts, addresses, networks a saved channel may name |
| LLMSCOPE_STATUS_PUBLIC | false | /status, /api/status and badges open to all (names and statuses only) |
| LLMSCOPE_LOG_LEVEL | INFO | log level |

NATS is configured by :class:`llmscope.bus.settings.BusSettings` (``NATS_URL`` and the stream limits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmscope.bus.settings import BusSettings
from llmscope.config.env import ConfigError, Env, Secret
from llmscope.proto import subjects


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Everything the API process needs; build with :meth:`from_env` or directly in tests."""

    database_url: Secret
    api_key: Secret
    ingest_key: Secret = field(default_factory=lambda: Secret(""))
    read_key: Secret = field(default_factory=lambda: Secret(""))
    auth_failures: int = 10
    auth_failure_window_s: float = 60.0
    bus: BusSettings = field(default_factory=BusSettings)
    host: str = "127.0.0.1"
    port: int = 8000
    persister: bool = True
    persister_health_host: str = "127.0.0.1"
    persister_health_port: int = 8004
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_statement_timeout_s: float = 30.0
    persist_batch: int = 2000
    retention_telemetry_days: float = 30
    retention_rollup_days: float = 400
    retention_minute_rollup_days: float | None = None
    """None: as ``retention_rollup_days``; :attr:`minute_rollup_days` is the one in force."""
    retention_violations_days: float = 0
    retention_deadletter_days: float = 30
    charts_bucket: str = subjects.SPC_CHARTS_BUCKET
    spc_request_timeout_s: float = 5.0
    refresh_s: float = 2.0
    session_days: float = 7
    status_public: bool = False
    alert_allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"

    @property
    def minute_rollup_days(self) -> float:
        """Days the minute rollups are kept (0: forever): their own setting, else the hours'."""
        if self.retention_minute_rollup_days is None:
            return self.retention_rollup_days
        return self.retention_minute_rollup_days

    @classmethod
    def from_env(cls, env: Env | None = None, *, require_api_key: bool = True) -> ApiSettings:
        """Read and validate; the standalone persister serves no HTTP and needs no key."""
        env = env or Env()
        db = env.url("DATABASE_URL", None, schemes=("postgres", "postgresql"))
        if db is None:
            raise ConfigError("DATABASE_URL is not set: expected postgresql://user:pass@host:port/db")
        key = env.secret("LLMSCOPE_API_KEY")
        if not key and require_api_key:
            raise ConfigError("LLMSCOPE_API_KEY is not set: the API refuses to run without a key")
        ingest = env.secret("LLMSCOPE_INGEST_KEY") or env.secret("LLMSCOPE_OTLP_INGEST_KEY")
        read = env.secret("LLMSCOPE_READ_KEY")
        named = {"LLMSCOPE_API_KEY": key, "LLMSCOPE_INGEST_KEY": ingest, "LLMSCOPE_READ_KEY": read}
        for name, value in named.items():
            if value and len(value.get()) < 16:
                raise ConfigError(f"{name} is too short: use at least 16 characters")
        given = [(name, value) for name, value in named.items() if value]
        for i, (name, value) in enumerate(given):
            for other, other_value in given[i + 1 :]:
                if value == other_value:
                    # One key per scope: the ingest key sits in every exporter's configuration
                    # and must not also open settings; a shared key would be the widest scope.
                    raise ConfigError(f"{other} must differ from {name}")
        pool_min = env.integer("LLMSCOPE_DB_POOL_MIN", 1, min=0, max=100)
        pool_max = env.integer("LLMSCOPE_DB_POOL_MAX", 10, min=1, max=200)
        if pool_max < max(pool_min, 1):
            raise ConfigError(f"LLMSCOPE_DB_POOL_MAX={pool_max}: must be >= LLMSCOPE_DB_POOL_MIN={pool_min}")
        rollup_days = env.number("LLMSCOPE_RETENTION_ROLLUP_DAYS", 400, min=0)
        return cls(
            database_url=Secret(db),
            api_key=key,
            ingest_key=ingest,
            read_key=read,
            auth_failures=env.integer("LLMSCOPE_AUTH_FAILURES", 10, min=0, max=1_000_000),
            auth_failure_window_s=env.number("LLMSCOPE_AUTH_FAILURE_WINDOW_S", 60.0, min=1, max=86400),
            bus=BusSettings.from_env(env),
            host=env.text("LLMSCOPE_HOST", "127.0.0.1"),
            port=env.integer("LLMSCOPE_PORT", 8000, min=0, max=65535),
            persister=env.flag("LLMSCOPE_PERSISTER", True),
            persister_health_host=env.text("LLMSCOPE_PERSISTER_HEALTH_HOST", "127.0.0.1"),
            persister_health_port=env.integer("LLMSCOPE_PERSISTER_HEALTH_PORT", 8004, min=0, max=65535),
            db_pool_min=pool_min,
            db_pool_max=pool_max,
            db_statement_timeout_s=env.number("LLMSCOPE_DB_STATEMENT_TIMEOUT_S", 30, min=0, max=86400),
            persist_batch=env.integer("LLMSCOPE_PERSIST_BATCH", 2000, min=1, max=10_000),
            retention_telemetry_days=env.number("LLMSCOPE_RETENTION_TELEMETRY_DAYS", 30, min=0),
            retention_rollup_days=rollup_days,
            retention_minute_rollup_days=_minute_rollup_days(env, rollup_days),
            retention_violations_days=env.number("LLMSCOPE_RETENTION_VIOLATIONS_DAYS", 0, min=0),
            retention_deadletter_days=env.number("LLMSCOPE_RETENTION_DEADLETTER_DAYS", 30, min=0),
            charts_bucket=env.text("LLMSCOPE_SPC_CHARTS_BUCKET", subjects.SPC_CHARTS_BUCKET),
            spc_request_timeout_s=env.number("LLMSCOPE_SPC_REQUEST_TIMEOUT_S", 5.0, min=0.1, max=300),
            refresh_s=env.number("LLMSCOPE_REFRESH_S", 2.0, min=0.5, max=3600),
            session_days=env.number("LLMSCOPE_SESSION_DAYS", 7, min=0.01, max=365),
            status_public=env.flag("LLMSCOPE_STATUS_PUBLIC", False),
            alert_allowed_hosts=env.items("LLMSCOPE_ALERT_ALLOWED_HOSTS"),
            max_body_bytes=env.integer("LLMSCOPE_MAX_BODY_BYTES", 4 * 1024 * 1024, min=1024, max=1 << 30),
            log_level=env.choice("LLMSCOPE_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
        )


MIN_MINUTE_ROLLUP_DAYS = 7
"""The shortest minute retention: the status page's uptime over the week, the overview's and the
comparison's windows up to 5 days in minutes read minute rollups alone."""


def _minute_rollup_days(env: Env, rollup_days: float) -> float | None:
    """LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS, validated against the hours' retention: minutes kept
    longer than the hours they are summed into would show nothing the hours cannot."""
    name = "LLMSCOPE_RETENTION_MINUTE_ROLLUP_DAYS"
    if env.raw(name) is None:
        return None
    days = env.number(name, 0, min=0)
    hours = "LLMSCOPE_RETENTION_ROLLUP_DAYS"
    if rollup_days > 0 and (days == 0 or days > rollup_days):
        kept = "forever" if days == 0 else f"{days:g} days"
        raise ConfigError(
            f"{name}={days:g}: minutes kept {kept}, longer than the hourly rollups "
            f"({hours}={rollup_days:g}); set it at most {rollup_days:g}, or leave it unset"
        )
    least = min(MIN_MINUTE_ROLLUP_DAYS, rollup_days) if rollup_days > 0 else MIN_MINUTE_ROLLUP_DAYS
    if 0 < days < least:
        raise ConfigError(
            f"{name}={days:g}: at least {least:g} days (the status page's week of uptime and the "
            "dashboard's windows up to 5 days are read from minute rollups)"
        )
    return days
