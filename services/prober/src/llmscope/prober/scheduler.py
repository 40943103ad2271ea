"""The probe loop: each target on its own jittered interval, all under one concurrency bound.

A probe waits for its slots *before* its clock starts, so queueing in the prober never counts
as latency: first a slot of its target (``concurrency`` per target, default 1: a target's
prompts go one after the other, so on a one-slot server the prober never measures its own
queue), then one of the prober's (``LLMSCOPE_PROBER_CONCURRENCY`` over all targets). Each target
rotates through its prompts. Whatever goes wrong in one probe is logged and the loop goes on;
the event goes to the outbox, so a slow NATS never delays probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp
import msgspec

from llmscope.config.logs import get_logger
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.prompts import Prompt
from llmscope.prober.providers import PROVIDERS, ProbeResult, Provider, probe
from llmscope.prober.sysmetrics import SystemSampler, local_names, system_scope
from llmscope.prober.targets import Target
from llmscope.proto import subjects
from llmscope.proto.base import new_id, utcnow
from llmscope.proto.switches import ModelSwitches
from llmscope.proto.telemetry import SystemMetrics, TelemetryEvent

log = get_logger("llmscope.prober")


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    prober_id: str = ""
    include_prompt_text: bool = False
    concurrency: int = 4


def build_event(
    target: Target,
    prompt: Prompt,
    result: ProbeResult,
    system: SystemMetrics,
    *,
    options: ProbeOptions,
    started: datetime | None = None,
) -> TelemetryEvent:
    """The telemetry of one probe (pure); ``system.scope`` says whose host its metrics are."""
    return TelemetryEvent(
        id=new_id(),
        ts=started if started is not None else utcnow(),
        provider=target.kind,
        model=target.model,
        target=target.name,
        host=target.host,
        prober=options.prober_id,
        prompt_id=prompt.id,
        prompt_class=prompt.prompt_class,
        prompt_hash=prompt.hash,
        prompt_text=prompt.text if options.include_prompt_text else None,
        streaming=target.streaming,
        max_tokens=prompt.max_tokens,
        status=result.status,
        error=result.error,
        http_status=result.http_status,
        latency_ms=result.latency_ms,
        ttft_ms=result.ttft_ms,
        total_duration_ms=result.total_duration_ms,
        load_duration_ms=result.load_duration_ms,
        prompt_eval_duration_ms=result.prompt_eval_duration_ms,
        eval_duration_ms=result.eval_duration_ms,
        prompt_eval_count=result.prompt_eval_count,
        eval_count=result.eval_count,
        tokens_per_s=result.tokens_per_s,
        cpu_percent=system.cpu_percent,
        memory_percent=system.memory_percent,
        gpu_percent=system.gpu_percent,
        gpu_memory_percent=system.gpu_memory_percent,
        system_scope=system.scope,
        cold_start=is_cold_start(target, result),
    )


def is_cold_start(target: Target, result: ProbeResult) -> bool:
    """A model load longer than the target's threshold, on a target that keeps those apart."""
    return (
        target.cold_start == "exclude"
        and result.load_duration_ms is not None
        and result.load_duration_ms > target.cold_start_ms
    )


def _operation_name(target: Target) -> str:
    """The GenAI conventions' ``gen_ai.operation.name``: Ollama's /api/generate completes text."""
    return "text_completion" if target.kind == "ollama" and target.api == "generate" else "chat"


class Scheduler:
    """Probes every target forever (until stopped) and hands each event to the outbox."""

    def __init__(
        self,
        targets: Sequence[Target],
        *,
        session: aiohttp.ClientSession,
        outbox: Outbox,
        sampler: SystemSampler,
        metrics: ProberMetrics,
        options: ProbeOptions,
        rng: random.Random | None = None,
        providers: dict[str, Provider] | None = None,
        switches: ModelSwitches | None = None,
        host_names: frozenset[str] | None = None,
    ) -> None:
        self._targets = list(targets)
        self._switches = switches or ModelSwitches()
        self._session = session
        self._outbox = outbox
        self._sampler = sampler
        self._metrics = metrics
        self._options = options
        self._rng = rng or random.Random()
        self._providers = providers or PROVIDERS
        self._slots = asyncio.Semaphore(options.concurrency)
        self._target_slots = {t.name: asyncio.Semaphore(t.concurrency) for t in self._targets}
        names = host_names if host_names is not None else local_names()
        self._scopes = {t.name: system_scope(t.base_url, names) for t in self._targets}
        self.probes = 0

    async def probe_once(self, target: Target, prompt: Prompt) -> TelemetryEvent:
        """One probe of ``target`` with ``prompt``: measured, recorded and queued for publishing."""
        own = self._target_slots.setdefault(target.name, asyncio.Semaphore(target.concurrency))
        async with own, self._slots:
            started = utcnow()
            result = await probe(self._session, self._providers[target.kind], target, prompt)
        system = await self._sampler.sample()
        scope = self._scopes.get(target.name) or system_scope(target.base_url, ())
        if scope != system.scope:
            system = msgspec.structs.replace(system, scope=scope)
        event = build_event(target, prompt, result, system, options=self._options, started=started)
        self._record(target, result)
        self._outbox.put(subjects.telemetry(target.kind, target.model), event)
        self.probes += 1
        return event

    def _record(self, target: Target, result: ProbeResult) -> None:
        self._metrics.probes.labels(target.name, target.kind, target.model, result.status).inc()
        if result.load_duration_ms is not None and result.load_duration_ms > target.cold_start_ms:
            self._metrics.cold_starts.labels(target.name).inc()
        if result.status == "ok" and result.latency_ms is not None:
            genai = (_operation_name(target), target.kind, target.model, target.name)
            self._metrics.latency.labels(*genai, str(target.streaming).lower()).observe(
                result.latency_ms / 1000
            )
            if result.ttft_ms is not None:
                self._metrics.ttft.labels(*genai).observe(result.ttft_ms / 1000)
        else:
            log.info(
                "probe failed",
                target=target.name,
                status=result.status,
                http_status=result.http_status,
                error=(result.error or "")[:200],
            )

    async def _probe_logged(self, target: Target, prompt: Prompt) -> None:
        try:
            await self.probe_once(target, prompt)
        except Exception:  # never let one probe end the loop
            log.exception("probe crashed", target=target.name, prompt=prompt.id)

    async def _loop(self, target: Target, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # Spread the first probes over one interval so targets do not fire in lockstep.
        next_at = loop.time() + self._rng.uniform(0, target.interval_s)
        turn = 0
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                delay = next_at - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    if stop.is_set():
                        return
                # A probe due while the target's slots are all busy waits for one to end, so
                # probes of one target never overlap beyond its concurrency (default: never).
                while len(in_flight) >= target.concurrency:
                    _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                began = loop.time()
                if not self._switches.enabled(target.kind, target.model):
                    # Disabled from the dashboard: look again next interval, probe nothing.
                    next_at = began + target.interval_s
                    continue
                prompt = target.prompts[turn % len(target.prompts)]
                turn += 1
                in_flight.add(
                    asyncio.create_task(self._probe_logged(target, prompt), name=f"probe {target.name}")
                )
                spread = self._rng.uniform(-target.jitter, target.jitter)
                next_at = began + target.interval_s * (1 + spread)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set; probes in flight are abandoned then."""
        tasks = [asyncio.create_task(self._loop(t, stop), name=f"probe {t.name}") for t in self._targets]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
