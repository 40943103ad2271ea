"""``llmscope persister``: the persister in a process of its own, without the HTTP API."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from llmscope.api.baseline_history import BaselineHistory
from llmscope.api.db import open_pool
from llmscope.api.metrics import ApiMetrics
from llmscope.api.persister.collector import tune_gc
from llmscope.api.persister.consumers import Persister
from llmscope.api.persister.hour_fold import fold_loop
from llmscope.api.persister.retention import retention_loop
from llmscope.api.settings import ApiSettings
from llmscope.bus.layout import prepare
from llmscope.bus.publisher import Publisher
from llmscope.config import eventloop
from llmscope.config.logs import get_logger, setup_logging
from llmscope.config.startup import Stopped, Unusable, stop_on_signals

log = get_logger("llmscope.api.persister")


async def run_standalone(
    settings: ApiSettings, stop: asyncio.Event, *, metrics: ApiMetrics | None = None
) -> None:
    """The persister without the HTTP API, as an API process runs it (``LLMSCOPE_PERSISTER=true``)
    in all its users see: it publishes the same live notices (probes stored, a traffic chart's
    record written) on core NATS for the open tabs of the API processes, and serves its metrics
    (``llmscope_persister_*``, its consumers' lag and dead letters) with /healthz and /readyz on
    ``LLMSCOPE_PERSISTER_HEALTH_PORT``."""
    # Imported here: the web's broadcaster module (FastAPI) is of no use to the functions above,
    # which the web's tests and the alerter's import.
    from llmscope.api.live import LiveNotices
    from llmscope.bus.connection import connect
    from llmscope.config.health import start_health_server
    from llmscope.config.metrics import service_registry

    metrics = metrics or ApiMetrics(service_registry("persister", "llmscope-api"))
    clients: list[Any] = []  # the NATS connection, once its streams are in place

    def ready() -> bool:
        # Ready while NATS answers (Postgres outages are retried batch by batch, nothing lost).
        return not stop.is_set() and bool(clients) and clients[0].is_connected

    health = await start_health_server(
        settings.persister_health_host,
        settings.persister_health_port,
        ready=ready,
        registry=metrics.registry,
        host_variable="LLMSCOPE_PERSISTER_HEALTH_HOST",
        port_variable="LLMSCOPE_PERSISTER_HEALTH_PORT",
    )
    try:
        pool = await open_pool(
            settings.database_url.get(),
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            stop=stop,
            statement_timeout_s=settings.db_statement_timeout_s,
        )
        try:
            nc = await connect(settings.bus.nats_url, "llmscope-persister", stop=stop)
        except BaseException:
            await pool.close()
            raise
        notices = LiveNotices()  # no tabs of its own: a lost notice waits for the model's next
        notices.attach(nc)
        try:
            js = nc.jetstream()
            await prepare(js, settings.bus, stop)
            clients.append(nc)
            persister = Persister(
                pool=pool,
                js=js,
                publisher=Publisher(js),
                batch_size=settings.persist_batch,
                metrics=metrics,
                on_stored=notices.on_stored,
            )
            history = BaselineHistory(lambda: pool, settings.charts_bucket, on_record=notices.on_chart)
            await asyncio.gather(
                persister.run(stop),
                retention_loop(pool, settings, stop),
                fold_loop(pool, stop),
                history.run(nc, stop),
            )
        finally:
            await notices.stop()
            await nc.drain()
            await pool.close()
    finally:
        if health is not None:
            await health.stop()


def main(argv: list[str] | None = None) -> int:
    """``llmscope persister`` / ``python -m llmscope.api.persister``: the persister without the
    HTTP API."""
    from llmscope.config.env import ConfigError, config_exit
    from llmscope.config.envhelp import BUS_SETTINGS, service_parser

    service_parser(
        "llmscope persister",
        "The persister alone (telemetry, violations, incidents and dead letters from NATS into "
        "Postgres), beside API processes with LLMSCOPE_PERSISTER=false. Configured by the "
        "environment (LLMSCOPE_API_KEY not needed); exits 0 on SIGINT/SIGTERM.",
        ApiSettings.__module__,
        BUS_SETTINGS,
    ).parse_args(argv)
    try:
        settings = ApiSettings.from_env(require_api_key=False)
    except ConfigError as exc:
        return config_exit("persister", exc)
    setup_logging("persister", settings.log_level)
    tune_gc()

    async def _run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await run_standalone(settings, stop)

    try:
        eventloop.run(_run())  # uvloop when installed, as the API under uvicorn
    except ConfigError as exc:  # its health port taken: as a bad setting, exit 2
        return config_exit("persister", exc)
    except Unusable as exc:
        print(f"llmscope persister: {exc}", file=sys.stderr)
        return 1
    except Stopped:
        log.info("stopped during start-up")
    return 0
