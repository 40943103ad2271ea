"""``llmscope spc-engine`` / ``python -m llmscope.spc_engine``: the SPC engine service.

Settings come from the environment (:mod:`llmscope.spc_engine.settings`). SIGINT/SIGTERM set a
stop event: the batch in hand finishes, charts are snapshotted, the connection drains; while it
still waits for NATS it stops at once, and with NATS away it stops without the final snapshot
(the next start replays from the last checkpoint). Exit codes: 0 after a signal, 1 when a
violation could not be published, a partition lease was lost (restart to replay) or another
live replica announces the same identity, 2 for a configuration error or bad arguments.
``/metrics`` on the health port: see :mod:`llmscope.spc_engine.metrics`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace

from nats.aio.client import Client as NATS

from llmscope.config import eventloop
from llmscope.config.env import ConfigError, config_exit
from llmscope.config.envhelp import BUS_SETTINGS, service_parser
from llmscope.config.health import start_health_server
from llmscope.config.logs import get_logger, setup_logging
from llmscope.config.startup import stop_on_signals
from llmscope.spc_engine.metrics import SpcMetrics
from llmscope.spc_engine.service import serve
from llmscope.spc_engine.settings import SpcSettings

log = get_logger("llmscope.spc_engine")


async def _main(settings: SpcSettings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    clients: list[NATS] = []

    def ready() -> bool:
        # Ready only while NATS answers: an engine cut off from it charts nothing.
        return not stop.is_set() and bool(clients) and clients[0].is_connected

    metrics = SpcMetrics()
    health = await start_health_server(
        settings.health_host,
        settings.health_port,
        ready=ready,
        registry=metrics.registry,
        host_variable="LLMSCOPE_SPC_HEALTH_HOST",
        port_variable="LLMSCOPE_SPC_HEALTH_PORT",
    )
    try:
        return await serve(settings, stop, on_connected=clients.append, metrics=metrics)
    finally:
        if health is not None:
            await health.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = service_parser(
        "llmscope spc-engine",
        "The SPC engine: charts the telemetry on NATS, publishes violations. "
        "Configured by the environment; exits 0 on SIGINT/SIGTERM.",
        SpcSettings.__module__,
        BUS_SETTINGS,
    )
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(LLMSCOPE_LOG_LEVEL)"
    )
    args = parser.parse_args(argv)
    try:
        settings = SpcSettings.from_env()
    except ConfigError as exc:
        return config_exit("spc-engine", exc)
    if args.log_level:
        settings = replace(settings, log_level=args.log_level)
    setup_logging("spc-engine", settings.log_level)
    log.info("starting", replica=settings.replica, baseline_n=settings.baseline_n)
    try:
        # uvloop when installed: the consume -> chart -> publish path runs faster on it (make bench (b)).
        return eventloop.run(_main(settings))
    except ConfigError as exc:  # its health port taken
        return config_exit("spc-engine", exc)


if __name__ == "__main__":
    sys.exit(main())
