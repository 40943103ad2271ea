"""An in-process alerter on the test's NATS and Postgres, with short timers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
from nats.js import JetStreamContext

from llmscope.alerter.api_view import ApiView
from llmscope.alerter.config import AlerterFile, Timings
from llmscope.alerter.llm import LlmConfig
from llmscope.alerter.migrate import migrate
from llmscope.alerter.retry import RetryPolicy
from llmscope.alerter.service import (
    Alerter,
    AlerterOptions,
    NotifierFactory,
    actions_durable,
    default_notifier_factory,
    utcnow,
    violation_consumer_options,
)
from llmscope.alerter.store import Store
from llmscope.alerter.tickets.base import TicketConfig
from llmscope.bus.consumer import DurableConsumer
from llmscope.bus.deadletter import DeadLetters
from llmscope.bus.publisher import Publisher
from llmscope.config.env import Env
from llmscope.proto import codec, subjects
from llmscope.proto.violation import ViolationEvent
from llmscope.proto.violation_action import ViolationActionEvent
from tests.alerter.factories import LOOPBACK_ALLOWED

FAST_RETRY = RetryPolicy(initial=0.05, max_delay=0.2, deadline=2.0, attempt_timeout=1.0)


@dataclass
class Running:
    alerter: Alerter
    store: Store
    pool: asyncpg.Pool
    consumer: DurableConsumer[ViolationEvent] | None
    actions: DurableConsumer[ViolationActionEvent] | None
    stop: asyncio.Event
    task: asyncio.Future[Any]
    session: aiohttp.ClientSession
    closed: bool = field(default=False)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        await self.task
        await self.alerter.drain_deliveries(grace=3.0)
        await self.session.close()
        await self.pool.close()

    async def crash(self) -> None:
        """Die without finishing anything: loops and in-flight deliveries are cancelled."""
        self.closed = True
        self.task.cancel()
        for t in list(self.alerter._tasks):
            t.cancel()
        await asyncio.gather(self.task, *self.alerter._tasks, return_exceptions=True)
        await self.session.close()
        self.pool.terminate()


async def start_alerter(
    database_url: str,
    js: JetStreamContext | None,
    env: Mapping[str, str],
    *,
    instance: str = "a",
    timings: Timings | None = None,
    lease: float = 5.0,
    retry: RetryPolicy = FAST_RETRY,
    factory: NotifierFactory = default_notifier_factory,
    config_file: AlerterFile | None = None,
    llm: LlmConfig | None = None,
    incident_window: float = 60.0,
    severities: tuple[Any, ...] = ("critical",),
    consumer_options: Mapping[str, Any] | None = None,
    clock: Callable[[], datetime] = utcnow,
    tickets: TicketConfig | None = None,
    api: ApiView | None = None,
    repage_after_resolve: float = 3600.0,
) -> Running:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await migrate(conn)
    store = Store(
        pool, instance=instance, clock=clock, lease=lease, incident_window=incident_window, analysis_delay=0
    )
    session = aiohttp.ClientSession()
    publisher = Publisher(js) if js is not None else None
    alerter = Alerter(
        store,
        env=Env({**LOOPBACK_ALLOWED, **env}),
        session=session,
        publisher=publisher,
        options=AlerterOptions(
            public_url="http://scope.test",
            severities=severities,
            tick_s=0.05,
            retry=retry,
            settings_refresh_s=0,
            llm=llm,
            config_file=config_file,
            timings=timings or Timings(group_wait=0.3, group_interval=0.2, repeat_interval=3600),
            tickets=tickets,
            repage_after_resolve_s=repage_after_resolve,
        ),
        notifier_factory=factory,
        # The API over the bus (settings bucket, telemetry requests); without NATS, no API.
        api=api or ApiView(js._nc if js is not None else None, timeout=2.0),
    )
    stop = asyncio.Event()
    consumer = None
    actions = None
    runs: list[Awaitable[Any]] = [alerter.run_loops(stop)]
    if js is not None and publisher is not None:
        consumer = DurableConsumer(
            js=js,
            stream=subjects.STREAM_VIOLATIONS,
            durable="alerter",
            filter_subjects=[subjects.VIOLATIONS_ALL],
            decode=lambda data: codec.decode_as(data, ViolationEvent),
            handler=alerter.on_violations,
            dead_letters=DeadLetters(publisher, "alerter"),
            options=violation_consumer_options(
                **{"batch_size": 16, "fetch_timeout": 0.1, **(consumer_options or {})}
            ),
        )
        runs.append(consumer.run(stop))
        actions = DurableConsumer(
            js=js,
            stream=subjects.STREAM_VIOLATION_ACTIONS,
            durable=actions_durable("alerter"),
            filter_subjects=[subjects.VIOLATION_ACTIONS_ALL],
            decode=lambda data: codec.decode_as(data, ViolationActionEvent),
            handler=alerter.on_violation_actions,
            dead_letters=DeadLetters(publisher, "alerter"),
            options=violation_consumer_options(batch_size=16, fetch_timeout=0.1),
        )
        runs.append(actions.run(stop))
    task = asyncio.ensure_future(asyncio.gather(*runs))
    return Running(alerter, store, pool, consumer, actions, stop, task, session)


async def publish(js: JetStreamContext, *events: ViolationEvent) -> None:
    pub = Publisher(js)
    for ev in events:
        await pub.publish(subjects.violations(ev.provider, ev.model, ev.rule), ev)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 20.0, what: str = ""
) -> None:
    """Wait until ``check`` (sync or async) holds, polling every 50 ms; fail after ``within`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        res = check()
        ok = await res if asyncio.iscoroutine(res) else res
        if ok:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.05)
