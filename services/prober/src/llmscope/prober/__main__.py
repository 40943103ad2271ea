"""``llmscope prober`` / ``python -m llmscope.prober``: probe LLM endpoints and publish telemetry.

    llmscope prober [--config FILE] [--once] [--log-level LEVEL]

``--config`` overrides LLMSCOPE_PROBER_CONFIG; ``--once`` probes every target with each of its
prompts once, prints the telemetry as JSON lines and exits (no NATS needed). Settings and their
variables are in :mod:`llmscope.prober.settings`. Exit codes: 0 after SIGINT/SIGTERM, 2 for a
configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from llmscope.bus.connection import connect
from llmscope.bus.kv import open_bucket, watch_bucket
from llmscope.bus.layout import SETUP_COMMAND
from llmscope.bus.publisher import Publisher
from llmscope.bus.streams import ensure_streams
from llmscope.config.env import ConfigError, Env, config_exit, redact_url
from llmscope.config.envhelp import BUS_SETTINGS, service_parser
from llmscope.config.health import start_health_server
from llmscope.config.logs import get_logger, setup_logging
from llmscope.prober.journal import Journal
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.scheduler import ProbeOptions, Scheduler
from llmscope.prober.settings import ProberSettings
from llmscope.prober.sysmetrics import SystemSampler
from llmscope.proto import codec, subjects
from llmscope.proto.base import Event
from llmscope.proto.switches import ModelSwitches

log = get_logger("llmscope.prober")

DRAIN_S = 5.0
BUCKET_RETRY_S = 2.0


def http_session(concurrency: int) -> aiohttp.ClientSession:
    # More pooled connections than probe slots, so no probe waits inside the HTTP client.
    connector = aiohttp.TCPConnector(limit=concurrency * 2, keepalive_timeout=10)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))


def _options(settings: ProberSettings) -> ProbeOptions:
    return ProbeOptions(
        prober_id=settings.prober_id,
        include_prompt_text=settings.include_prompt_text,
        concurrency=settings.concurrency,
    )


class _Printer:
    """A publisher for ``--once`` that writes events to stdout."""

    async def publish_many(
        self, events: Sequence[tuple[str, Event]], *, deadline: float | None = None
    ) -> list[None]:
        sys.stdout.writelines(codec.encode(event).decode() + "\n" for _, event in events)
        return [None] * len(events)


async def once(settings: ProberSettings, metrics: ProberMetrics) -> int:
    """Probe every target with each of its prompts once; returns how many probes failed."""
    outbox = Outbox(_Printer(), metrics, maxsize=max(1, sum(len(t.prompts) for t in settings.targets)))
    sampler = SystemSampler()
    async with http_session(settings.concurrency) as session:
        scheduler = Scheduler(
            settings.targets,
            session=session,
            outbox=outbox,
            sampler=sampler,
            metrics=metrics,
            options=_options(settings),
        )
        events = await asyncio.gather(
            *(scheduler.probe_once(t, p) for t in settings.targets for p in t.prompts)
        )
    await outbox.flush(DRAIN_S)
    sampler.close()
    return sum(1 for e in events if e.status != "ok")


async def run(settings: ProberSettings, metrics: ProberMetrics, stop: asyncio.Event) -> None:
    """Probe and publish until ``stop`` is set; probing starts before NATS answers."""
    clients: list[NATS] = []
    streams_ready = asyncio.Event()
    switches = ModelSwitches()
    watchers: list[asyncio.Task[None]] = []
    streams_missing_logged: list[bool] = []

    async def connect_bus() -> Publisher:
        if not clients:
            clients.append(
                await connect(settings.bus.nats_url, f"llmscope-prober-{settings.prober_id}", stop=stop)
            )
        js = clients[0].jetstream()
        if settings.manage_streams:
            await ensure_streams(js, settings.bus)
            if not watchers:
                models = await open_bucket(
                    js,
                    subjects.MODELS_BUCKET,
                    description="LLMscope model switches",
                    replicas=settings.bus.replicas,
                )
                watchers.append(
                    asyncio.create_task(watch_bucket(models, switches.apply, stop), name="switches")
                )
        else:
            # NotFoundError until the setup step has made the stream: connect_bus is retried.
            try:
                await js.stream_info(subjects.STREAM_TELEMETRY)
            except NotFoundError:
                if not streams_missing_logged:
                    streams_missing_logged.append(True)
                    log.error(
                        "a stream this service needs is not set up; waiting for the setup step",
                        stream=subjects.STREAM_TELEMETRY,
                        problem="missing",
                        hint=f"run `{SETUP_COMMAND}` as the setup user; the prober may not create streams",
                    )
                raise
            if not watchers:
                watchers.append(
                    asyncio.create_task(_watch_switches_once_made(js, switches, stop), name="switches")
                )
        streams_ready.set()
        return Publisher(js)

    journal = Journal(settings.outbox_dir, settings.prober_id) if settings.outbox_dir else None
    outbox = Outbox(
        None,
        metrics,
        maxsize=settings.outbox_size,
        journal=journal,
        linger=settings.publish_linger_ms / 1000,
    )
    await outbox.recover()
    sampler = SystemSampler()
    health = await start_health_server(
        settings.health_host,
        settings.health_port,
        ready=lambda: streams_ready.is_set() and clients[0].is_connected,
        registry=metrics.registry,
        host_variable="LLMSCOPE_PROBER_HEALTH_HOST",
        port_variable="LLMSCOPE_PROBER_HEALTH_PORT",
    )
    try:
        async with http_session(settings.concurrency) as session:
            scheduler = Scheduler(
                settings.targets,
                session=session,
                outbox=outbox,
                sampler=sampler,
                metrics=metrics,
                options=_options(settings),
                switches=switches,
            )
            publishing = asyncio.create_task(outbox.run(stop, connect_bus), name="outbox")
            await scheduler.run(stop)
            # The worker ends by itself once stopped, unless it still waits for NATS.
            await asyncio.wait({publishing}, timeout=DRAIN_S)
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
        left = await outbox.flush(DRAIN_S) if streams_ready.is_set() else len(outbox)
        if left:
            log.warning("stopped with unpublished telemetry", left=left)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        sampler.close()
        if journal is not None:
            await journal.aclose()
        if health is not None:
            await health.stop()
        if clients:
            await clients[0].close()


async def _watch_switches_once_made(
    js: JetStreamContext, switches: ModelSwitches, stop: asyncio.Event
) -> None:
    """Watch the model switches once the API has made their bucket; probing does not wait for it
    (a stack without the API has none, and every model is then enabled)."""
    while not stop.is_set():
        try:
            models = await js.key_value(subjects.MODELS_BUCKET)
        except BucketNotFoundError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BUCKET_RETRY_S)
            continue
        await watch_bucket(models, switches.apply, stop)
        return


def build_parser() -> argparse.ArgumentParser:
    parser = service_parser(
        "llmscope prober",
        "Probe LLM endpoints, publish telemetry to NATS. Configured by the environment; "
        "exits 0 on SIGINT/SIGTERM.",
        ProberSettings.__module__,
        BUS_SETTINGS,
    )
    parser.add_argument("--config", type=Path, help="TOML or YAML targets file (LLMSCOPE_PROBER_CONFIG)")
    parser.add_argument(
        "--once", action="store_true", help="probe each target and prompt once, print JSON, exit"
    )
    parser.add_argument(
        "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(LLMSCOPE_LOG_LEVEL)"
    )
    return parser


async def _serve(settings: ProberSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, ProberMetrics(), stop)


def main(argv: Sequence[str] | None = None, env: Env | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = ProberSettings.from_env(env or Env(), config_path=args.config)
        if args.log_level:
            settings = replace(settings, log_level=args.log_level)
        setup_logging("prober", settings.log_level)
        log.info(
            "starting",
            targets=",".join(t.name for t in settings.targets),
            source=settings.source,
            nats=redact_url(settings.bus.nats_url) if not args.once else "-",
        )
        if args.once:
            failed = asyncio.run(once(settings, ProberMetrics()))
            return 1 if failed else 0
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        return config_exit("prober", exc)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
