"""Bus settings common to every service, read from the environment.

| variable | default | meaning |
| --- | --- | --- |
| NATS_URL | nats://127.0.0.1:4222 | NATS server(s), comma-separated |
| NATS_USER | unset | NATS user for the servers in NATS_URL that name none (compose, Kubernetes) |
| NATS_PASSWORD | unset | its password (a secret); needed with NATS_USER |
| LLMSCOPE_TELEMETRY_MAX_AGE_H | 168 | hours telemetry stays in its stream |
| LLMSCOPE_TELEMETRY_MAX_BYTES | -1 | byte cap of the telemetry stream (-1: none) |
| LLMSCOPE_VIOLATIONS_MAX_AGE_H | 2160 | hours violations stay in their stream (90 days) |
| LLMSCOPE_DEADLETTER_MAX_AGE_H | 720 | hours dead letters stay (30 days) |
| LLMSCOPE_DUPLICATE_WINDOW_S | 120 | de-duplication window on Nats-Msg-Id (telemetry, dead letters) |
| LLMSCOPE_VIOLATIONS_DUPLICATE_WINDOW_H | 24 | the same for violations and incidents |
| LLMSCOPE_STREAM_REPLICAS | 1 | stream replicas (3 on a clustered NATS) |
| LLMSCOPE_MANAGE_STREAMS | true | create and update streams and buckets; false: wait for `llmscope setup` |
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from llmscope.config.env import ConfigError, Env

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True, slots=True)
class BusSettings:
    nats_url: str = DEFAULT_NATS_URL
    telemetry_max_age_s: float = 168 * 3600
    telemetry_max_bytes: int = -1
    violations_max_age_s: float = 2160 * 3600
    deadletter_max_age_s: float = 720 * 3600
    duplicate_window_s: float = 120
    violations_duplicate_window_s: float = 24 * 3600
    replicas: int = 1
    manage_streams: bool = True
    """Create and update the streams and buckets at start (``llmscope.bus.layout``); False:
    only check them, waiting for the setup step (the user may not create streams)."""

    @classmethod
    def from_env(cls, env: Env | None = None) -> BusSettings:
        env = env or Env()
        url = env.url("NATS_URL", DEFAULT_NATS_URL, schemes=("nats", "tls", "ws", "wss")) or DEFAULT_NATS_URL
        user, password = env.optional_text("NATS_USER"), env.secret("NATS_PASSWORD")
        if user is not None:
            if not password:
                raise ConfigError(f"NATS_USER={user!r} is set but NATS_PASSWORD is empty or unset")
            url = with_credentials(url, user, password.get())
        return cls(
            nats_url=url,
            telemetry_max_age_s=env.number("LLMSCOPE_TELEMETRY_MAX_AGE_H", 168, min=0.01) * 3600,
            telemetry_max_bytes=env.integer("LLMSCOPE_TELEMETRY_MAX_BYTES", -1, min=-1),
            violations_max_age_s=env.number("LLMSCOPE_VIOLATIONS_MAX_AGE_H", 2160, min=0.01) * 3600,
            deadletter_max_age_s=env.number("LLMSCOPE_DEADLETTER_MAX_AGE_H", 720, min=0.01) * 3600,
            duplicate_window_s=env.number("LLMSCOPE_DUPLICATE_WINDOW_S", 120, min=1),
            violations_duplicate_window_s=env.number("LLMSCOPE_VIOLATIONS_DUPLICATE_WINDOW_H", 24, min=0.001)
            * 3600,
            replicas=env.integer("LLMSCOPE_STREAM_REPLICAS", 1, min=1, max=5),
            manage_streams=env.flag("LLMSCOPE_MANAGE_STREAMS", True),
        )


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` (servers separated by commas) with ``user`` and ``password`` on every server that
    names no user of its own: compose and Kubernetes give each service its user and password
    apart from the shared server address (a secret key each), ``llmscope up`` puts them in the URL.
    """
    servers = []
    for server in url.split(","):
        server = server.strip()
        parts = urlsplit(server)
        if parts.username is None:
            creds = f"{quote(user, safe='')}:{quote(password, safe='')}@"
            server = parts._replace(netloc=creds + parts.netloc).geturl()
        servers.append(server)
    return ",".join(servers)
