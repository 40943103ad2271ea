"""What every part of the alerter service shares: the store, the API over the bus, the channels'
factory, the options, and the runtime configuration (the file, the environment and the API's
settings) with the ticket tracker it chooses. ``Alerter`` (service.py) is assembled from one part
per concern on this base: ``dispatch`` (flushing due groups, delivering and re-sending
notifications) and ``analysis_worker`` (the incidents' analyses)."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp

from llmscope.alerter.api_view import ApiView
from llmscope.alerter.config import AlerterFile, RuntimeConfig, Timings, build_runtime
from llmscope.alerter.llm import LlmConfig
from llmscope.alerter.metrics import AlerterMetrics
from llmscope.alerter.notifiers.base import Notifier
from llmscope.alerter.notifiers.registry import build_notifier
from llmscope.alerter.notifiers.slack import ThreadStore
from llmscope.alerter.retention import RetentionPolicy
from llmscope.alerter.retry import RetryPolicy
from llmscope.alerter.store import Store
from llmscope.alerter.tickets.base import TicketConfig
from llmscope.alerter.tickets.from_settings import ticket_config_from
from llmscope.alerter.tickets.settings import build_tracker
from llmscope.alerter.tickets.sync import TicketSync
from llmscope.bus.publisher import Publisher
from llmscope.config.env import ConfigError, Env
from llmscope.config.logs import get_logger
from llmscope.proto.violation import Severity

log = get_logger("llmscope.alerter")

NotifierFactory = Callable[[str, RuntimeConfig, aiohttp.ClientSession], Notifier]


def default_notifier_factory(
    name: str, runtime: RuntimeConfig, session: aiohttp.ClientSession, threads: ThreadStore | None = None
) -> Notifier:
    return build_notifier(runtime.channels[name], session, threads=threads)


@dataclass
class AlerterOptions:
    """What the service needs beyond the store; every field has a test-friendly override."""

    public_url: str = "http://127.0.0.1:8000"
    severities: tuple[Severity, ...] = ("critical",)
    tick_s: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 16
    settings_refresh_s: float = 10.0
    llm: LlmConfig | None = None
    config_file: AlerterFile | None = None
    timings: Timings = field(default_factory=Timings)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    gauges_s: float = 10.0
    """How often the incident gauges are read from Postgres."""
    tickets: TicketConfig | None = None
    """Where critical incidents open tickets; None: no tickets."""
    repage_after_resolve_s: float = 3600.0
    """A violation resolved by hand and not cleared by the engine this long after is paged
    again (once per resolution); 0: never."""


class AlerterBase:
    """The state every part of the alerter uses, and its runtime configuration."""

    def __init__(
        self,
        store: Store,
        *,
        env: Env,
        session: aiohttp.ClientSession,
        publisher: Publisher | None,
        options: AlerterOptions,
        notifier_factory: NotifierFactory = default_notifier_factory,
        rng: random.Random | None = None,
        metrics: AlerterMetrics | None = None,
        api: ApiView | None = None,
    ) -> None:
        self.store = store
        # The API's settings and telemetry, over the bus (None: no API, every read empty).
        self.api = api or ApiView(None)
        self.metrics = metrics or AlerterMetrics()
        self._env = env
        self._session = session
        self._publisher = publisher
        self._opts = options
        # The product's channels keep Slack threads in Postgres; a test's factory brings its own.
        self._factory: NotifierFactory = (
            functools.partial(default_notifier_factory, threads=store)
            if notifier_factory is default_notifier_factory
            else notifier_factory
        )
        self._resent: dict[tuple[int, str], datetime] = {}
        self._rng = rng or random.Random()
        self._runtime: RuntimeConfig | None = None
        self._runtime_at = 0.0
        self._sem = asyncio.Semaphore(options.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._live: set[str] = set()  # notification ids this process is delivering
        self._started = False  # the first dispatch pass has run
        self._wake_outbox = asyncio.Event()
        self._repage_tell_after = 0.0  # monotonic: the API was not told; no new try before it
        self.tickets: TicketSync | None = None
        self._tickets_cfg: TicketConfig | None = None
        self._tickets_error = ""
        self._use_tickets(options.tickets)
        self.ready = False

    # -- configuration ----------------------------------------------------------------------

    async def runtime(self) -> RuntimeConfig:
        """File + environment + the API's settings, re-read every ``settings_refresh_s``."""
        loop = asyncio.get_running_loop()
        if self._runtime is None or loop.time() - self._runtime_at >= self._opts.settings_refresh_s:
            settings = await self.api.settings()
            self._runtime = build_runtime(
                self._opts.config_file,
                self._env,
                settings,
                timings=self._opts.timings,
                severities=self._opts.severities,
                timeout=self._opts.retry.attempt_timeout,
            )
            self._runtime_at = loop.time()
            self._tickets_from(settings)
        return self._runtime

    def _tickets_from(self, settings: Mapping[str, object]) -> None:
        """The tracker the settings choose (else the environment's): the ticket worker follows
        a change of the settings page without a restart."""
        try:
            config, error = ticket_config_from(settings, self._opts.tickets), ""
        except ConfigError as exc:
            config, error = None, str(exc)
        if error != self._tickets_error:
            self._tickets_error = error
            if error:
                log.warning("ticket settings unusable: no tickets until they are fixed", error=error)
        if config != self._tickets_cfg:
            self._use_tickets(config)
            log.info("ticket tracker configured", tracker=config.kind if config else "none")

    def _use_tickets(self, config: TicketConfig | None) -> None:
        self._tickets_cfg = config
        self.tickets = (
            None
            if config is None
            else TicketSync(self.store, build_tracker(config, self._session), config, self._opts.public_url)
        )
