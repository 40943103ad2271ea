"""``python -m llmscope.alerter`` / ``llmscope alerter``: the alerter service.

Flags: ``--config PATH`` (overrides LLMSCOPE_ALERTER_CONFIG), ``--check-config`` (validate the
configuration, print routes and channels without secrets, exit), ``--log-level``. Environment
variables: see :mod:`llmscope.alerter.settings`.

At start it waits for Postgres (a log line per attempt) and NATS, as long as they take; SIGINT or
SIGTERM ends it at any time. Exit codes: 0 after a signal, 1 when Postgres answers but refuses
(bad password, no such database: one line naming host:port/database), 2 for a configuration error.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import asyncpg

from llmscope.alerter.api_view import ApiView
from llmscope.alerter.config import build_runtime, channels_from_env, load_file
from llmscope.alerter.control import ControlResponder
from llmscope.alerter.destinations import Destinations, guarded_session
from llmscope.alerter.metrics import AlerterMetrics
from llmscope.alerter.migrate import migrate
from llmscope.alerter.retention import RetentionPolicy
from llmscope.alerter.service import (
    Alerter,
    AlerterOptions,
    actions_durable,
    utcnow,
    violation_consumer_options,
)
from llmscope.alerter.settings import AlerterSettings
from llmscope.alerter.store import Store
from llmscope.bus.connection import connect
from llmscope.bus.consumer import DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.layout import layout, prepare
from llmscope.bus.metrics import sample_consumers
from llmscope.bus.publisher import Publisher
from llmscope.config import eventloop
from llmscope.config.env import ConfigError, Env, config_exit
from llmscope.config.envhelp import BUS_SETTINGS, service_parser
from llmscope.config.health import start_health_server
from llmscope.config.logs import get_logger, setup_logging
from llmscope.config.outbound import DestinationRefused, OutboundPolicy
from llmscope.config.startup import Stopped, Unusable, stop_on_signals, wait_for_postgres
from llmscope.proto import codec, subjects
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent

log = get_logger("llmscope.alerter")

LAG_SAMPLE_S = 10.0
"""How often the violation consumer's lag is read from the server (a third of a 30 s scrape)."""


def _decode(data: bytes) -> ViolationEvent:
    return codec.decode_as(data, ViolationEvent)


def _decode_action(data: bytes) -> ViolationActionEvent:
    return codec.decode_as(data, ViolationActionEvent)


async def check_llm_destination(settings: AlerterSettings, policy: OutboundPolicy) -> None:
    """Refuse an LLM analysis URL the outbound policy refuses, as a configuration error naming
    the variable (issue 9: it was allowed as configured, so ``http://169.254.169.254/`` made the
    alerter post incident summaries to the metadata service; the answer is stored and shown)."""
    if settings.llm is None:
        return
    try:
        await policy.check_url(settings.llm.url)
    except DestinationRefused as exc:
        raise ConfigError(f"LLMSCOPE_ANALYSIS_LLM_URL: {exc}") from None


async def serve(settings: AlerterSettings, env: Env, stop: asyncio.Event) -> None:
    file = load_file(settings.config_path) if settings.config_path else None
    await check_llm_destination(settings, OutboundPolicy.from_env(env))
    dsn = settings.database_url.get()
    # Like NATS below: a database that is not up yet is waited for (a line per attempt).
    limit = settings.db_statement_timeout_s
    # Every query bounded, as the API's: Postgres ends a slow one, the client a frozen server.
    pool = await wait_for_postgres(
        lambda: asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=8,
            timeout=10,
            command_timeout=limit + 5 if limit > 0 else None,
            server_settings={"statement_timeout": str(int(limit * 1000))} if limit > 0 else None,
        ),
        dsn=dsn,
        stop=stop,
    )
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
        if applied:
            log.info("schema migrated", applied=",".join(applied))
        nc = await connect(settings.bus.nats_url, f"llmscope-alerter-{settings.instance}", stop=stop)
        try:
            js = nc.jetstream()
            # The settings bucket the API writes (the alerter reads it: api_view).
            await prepare(
                js, settings.bus, stop, buckets=[layout(settings.bus).bucket(subjects.SETTINGS_BUCKET)]
            )
            publisher = Publisher(js)
            store = Store(
                pool,
                instance=settings.instance,
                clock=utcnow,
                lease=settings.lease_s,
                incident_window=settings.incident_window_s,
                sustain_after=settings.incident_sustained_s,
                incident_min_severity=settings.incident_min_severity,
                analysis_delay=settings.analysis_delay_s,
                analysis_lease=(settings.llm.timeout if settings.llm else 0) + 60,
            )
            metrics = AlerterMetrics()
            # Every HTTP connection of the alerter goes through the outbound policy's resolver
            # (DNS rebinding: llmscope.config.outbound), the LLM analysis endpoint's too: its
            # address was checked at start (check_llm_destination), its name is at each connect.
            async with guarded_session(Destinations.from_env(env)) as session:
                alerter = Alerter(
                    store,
                    env=env,
                    session=session,
                    publisher=publisher,
                    options=AlerterOptions(
                        public_url=settings.public_url,
                        severities=settings.severities,
                        tick_s=settings.tick_s,
                        retry=settings.retry,
                        concurrency=settings.concurrency,
                        settings_refresh_s=settings.settings_refresh_s,
                        llm=settings.llm,
                        tickets=settings.tickets,
                        repage_after_resolve_s=settings.repage_after_resolve_s,
                        config_file=file,
                        timings=settings.timings,
                        retention=RetentionPolicy(
                            days=settings.retention_days,
                            # How far back a violation can come again: see retention.py.
                            replay_window_s=max(
                                settings.bus.violations_max_age_s, settings.bus.telemetry_max_age_s
                            ),
                        ),
                    ),
                    metrics=metrics,
                    api=ApiView(nc),
                )
                await alerter.runtime()  # a bad file or env fails here, before consuming
                control = ControlResponder(
                    alerter,
                    env,
                    config_path=settings.config_path,
                    public_url=settings.public_url,
                    session=session,
                )
                await control.start(nc)
                consumer = DurableConsumer(
                    js=js,
                    stream=subjects.STREAM_VIOLATIONS,
                    durable=settings.durable,
                    filter_subjects=[subjects.VIOLATIONS_ALL],
                    decode=_decode,
                    handler=alerter.on_violations,
                    dead_letters=DeadLetters(publisher, "alerter"),
                    options=violation_consumer_options(),
                    metrics=metrics.consumers,
                )
                # What people do through the API comes as events (the alerter never reads the
                # API's tables); they wait in their stream while the alerter is down.
                actions = DurableConsumer(
                    js=js,
                    stream=subjects.STREAM_VIOLATION_ACTIONS,
                    durable=actions_durable(settings.durable),
                    filter_subjects=[subjects.VIOLATION_ACTIONS_ALL],
                    decode=_decode_action,
                    handler=alerter.on_violation_actions,
                    dead_letters=DeadLetters(publisher, "alerter"),
                    options=violation_consumer_options(),
                    metrics=metrics.consumers,
                )
                health = await start_health_server(
                    settings.health_host,
                    settings.health_port,
                    ready=lambda: alerter.ready,
                    registry=metrics.registry,
                    host_variable="LLMSCOPE_ALERTER_HEALTH_HOST",
                    port_variable="LLMSCOPE_ALERTER_HEALTH_PORT",
                )
                log.info("alerter running", instance=settings.instance, durable=settings.durable)
                lag = sample_consumers(
                    metrics.consumers,
                    js,
                    subjects.STREAM_VIOLATIONS,
                    lambda: (settings.durable,),
                    stop,
                    every=LAG_SAMPLE_S,
                )
                try:
                    await asyncio.gather(consumer.run(stop), actions.run(stop), alerter.run_loops(stop), lag)
                finally:
                    await control.stop()
                    await alerter.drain_deliveries(grace=5.0)
                    if health is not None:
                        await health.stop()
        finally:
            await nc.drain()
    finally:
        await pool.close()


def check_config(settings: AlerterSettings, env: Env) -> int:
    file = load_file(settings.config_path) if settings.config_path else None
    asyncio.run(check_llm_destination(settings, OutboundPolicy.from_env(env)))
    runtime = build_runtime(file, env, {}, timings=settings.timings, severities=settings.severities)
    for spec in runtime.channels.values():
        print(
            f"channel {spec.name}: kind={spec.kind} enabled={spec.enabled} send_resolved={spec.send_resolved}"
        )
    for r in runtime.routes:
        print(
            f"route {r.name}: channels={','.join(r.channels) or '-'} severities={','.join(r.severities)}"
            f" rules={','.join(r.rules) or 'any'} models={','.join(r.models) or 'any'}"
            f" group_by={','.join(r.group_by)} wait={r.group_wait:g}s interval={r.group_interval:g}s"
            f" repeat={r.repeat_interval:g}s"
        )
    for s in runtime.silences:
        print(f"silence {s.id}: {s.kind} by {s.author}: {s.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = service_parser(
        "llmscope alerter",
        "The alerter: routes violations to notification channels, groups them into incidents. "
        "Configured by the environment; waits for Postgres and NATS at start; exits 0 on "
        "SIGINT/SIGTERM, 1 when Postgres refuses it, 2 for a configuration error.",
        AlerterSettings.__module__,
        BUS_SETTINGS,
    )
    parser.add_argument(
        "--config", type=Path, help="routes/channels file (overrides LLMSCOPE_ALERTER_CONFIG)"
    )
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    parser.add_argument("--log-level", help="overrides LLMSCOPE_LOG_LEVEL")
    args = parser.parse_args(argv)
    env = Env()
    try:
        settings = AlerterSettings.from_env(env)
        if args.config is not None:
            if not args.config.is_file():
                raise ConfigError(f"--config {args.config}: no such file")
            settings = replace(settings, config_path=args.config)
        if args.check_config:
            return check_config(settings, env)
        # The channels the environment configures, checked now rather than once Postgres and
        # NATS answer (a bad LLMSCOPE_SMTP_PORT was found only then, or never while they were
        # down); the file's and the dashboard's are checked where they are read.
        channels_from_env(env, settings.retry.attempt_timeout)
    except ConfigError as exc:
        return config_exit("alerter", exc)
    setup_logging("alerter", args.log_level or settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        stop_on_signals(stop)
        await serve(settings, env, stop)

    try:
        eventloop.run(run())  # uvloop when installed, as the SPC engine
    except ConfigError as exc:
        return config_exit("alerter", exc)
    except Unusable as exc:
        print(f"llmscope alerter: {exc}", file=sys.stderr)
        return 1
    except Stopped:
        log.info("stopped during start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
