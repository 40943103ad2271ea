"""The probe loop: each target on its own jittered interval, all under one concurrency bound.

A probe waits for a concurrency slot *before* its clock starts, so queueing never counts as
latency. Each target rotates through its prompts. Whatever goes wrong in one probe is logged
and the loop goes on; the event goes to the outbox, so a slow NATS never delays probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from llmscope.config.logs import get_logger
from llmscope.prober.metrics import ProberMetrics
from llmscope.prober.outbox import Outbox
from llmscope.prober.prompts import Prompt
from llmscope.prober.providers import PROVIDERS, ProbeResult, Provider, probe
from llmscope.prober.sysmetrics import SystemSampler
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
    """The telemetry of one probe (pure)."""
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
    )


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
        self.probes = 0

    async def probe_once(self, target: Target, prompt: Prompt) -> TelemetryEvent:
        """One probe of ``target`` with ``prompt``: measured, recorded and queued for publishing."""
        async with self._slots:
            started = utcnow()
            result = await probe(self._session, self._providers[target.kind], target, prompt)
        system = await self._sampler.sample()
        event = build_event(target, prompt, result, system, options=self._options, started=started)
        self._record(target, result)
        self._outbox.put(subjects.telemetry(target.kind, target.model), event)
        self.probes += 1
        return event

    def _record(self, target: Target, result: ProbeResult) -> None:
        self._metrics.probes.labels(target.name, target.kind, target.model, result.status).inc()
        if result.status == "ok" and result.latency_ms is not None:
            self._metrics.latency.labels(target.name, str(target.streaming).lower()).observe(
                result.latency_ms / 1000
            )
            if result.ttft_ms is not None:
                self._metrics.ttft.labels(target.name).observe(result.ttft_ms / 1000)
        else:
            log.info(
                "probe failed",
                target=target.name,
                status=result.status,
                http_status=result.http_status,
                error=(result.error or "")[:200],
            )

    async def _loop(self, target: Target, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # Spread the first probes over one interval so targets do not fire in lockstep.
        next_at = loop.time() + self._rng.uniform(0, target.interval_s)
        turn = 0
        while not stop.is_set():
            delay = next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    return
            began = loop.time()
            if not self._switches.enabled(target.kind, target.model):
                # Disabled from the dashboard: look again next interval, probe nothing.
                next_at = began + target.interval_s
                continue
            prompt = target.prompts[turn % len(target.prompts)]
            turn += 1
            try:
                await self.probe_once(target, prompt)
            except Exception:  # never let one probe end the loop
                log.exception("probe crashed", target=target.name, prompt=prompt.id)
            spread = self._rng.uniform(-target.jitter, target.jitter)
            next_at = max(loop.time(), began + target.interval_s * (1 + spread))

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until ``stop`` is set; probes in flight are abandoned then."""
        tasks = [asyncio.create_task(self._loop(t, stop), name=f"probe {t.name}") for t in self._targets]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
