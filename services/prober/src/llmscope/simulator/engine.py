"""The simulator's state: models, per-model random streams, load state and anomalies."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from llmscope.simulator.anomalies import AnomalyBook, Effect
from llmscope.simulator.latency import Plan, plan_request
from llmscope.simulator.models import SimModel


class UnknownModel(LookupError):
    """The request names a model the simulator does not serve."""


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A planned response and the anomalies that shaped it."""

    model: SimModel
    plan: Plan
    effect: Effect


class Simulator:
    """Plans responses: deterministic for a seed when requests to one model arrive one at a time."""

    def __init__(
        self,
        models: Sequence[SimModel],
        *,
        seed: int | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("the simulator needs at least one model")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in {names}")
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.models = {m.name: m for m in models}
        self.seed = seed
        self.time_scale = time_scale
        self.clock = clock
        self.anomalies = AnomalyBook(clock)
        self._rngs = {
            m.name: np.random.default_rng(None if seed is None else [seed, zlib.crc32(m.name.encode())])
            for m in models
        }
        self._last_used: dict[str, float] = {}
        self._ready_at: dict[str, float] = {}
        self.requests = 0

    def model(self, name: str) -> SimModel:
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(name) from None

    def schedule(self, name: str, prompt: str, max_tokens: int | None) -> Scheduled:
        """Plan one request for model ``name``; raises UnknownModel."""
        model = self.model(name)
        rng = self._rngs[name]
        now = self.clock()
        last = self._last_used.get(name)
        # Keep-alive is measured in simulated time, so a fast simulator unloads models sooner too.
        cold = last is None or (now - last) > model.keep_alive_s * self.time_scale
        effect = self.anomalies.effect(model, lambda: float(rng.random()))
        plan = plan_request(
            model,
            prompt,
            max_tokens,
            rng,
            cold=cold,
            load_wait_s=max(0.0, self._ready_at.get(name, now) - now),
            factor=effect.factor,
            time_scale=self.time_scale,
            empty=effect.outage is not None and effect.outage.mode == "empty",
        )
        if effect.outage is None or effect.outage.mode in ("empty", "truncate"):
            self._last_used[name] = max(self._last_used.get(name, now), now + plan.total_s)
            if cold:
                self._ready_at[name] = now + plan.head_s + plan.load_s
        self.requests += 1
        return Scheduled(model=model, plan=plan, effect=effect)

    def state(self) -> dict[str, object]:
        now = self.clock()
        models = []
        for m in self.models.values():
            last = self._last_used.get(m.name)
            loaded = last is not None and (now - last) <= m.keep_alive_s * self.time_scale
            models.append(
                {
                    "name": m.name,
                    "host": m.host,
                    "flavour": m.flavour,
                    "tokens_per_s": m.tokens_per_s,
                    "prompt_tokens_per_s": m.prompt_tokens_per_s,
                    "overhead_s": m.overhead_s,
                    "load_s": m.load_s,
                    "sigma": m.sigma,
                    "keep_alive_s": m.keep_alive_s,
                    "loaded": loaded,
                }
            )
        return {
            "seed": self.seed,
            "time_scale": self.time_scale,
            "requests": self.requests,
            "models": models,
            "anomalies": [a.describe(now) for a in self.anomalies.active()],
        }
