"""The latency model: how long each phase of one simulated request takes (pure, seeded).

A request pays a fixed overhead, then the model load when it was idle (cold start), then prompt
evaluation proportional to the prompt tokens, then one interval per output token. Every phase gets
its own lognormal noise; an anomaly factor multiplies everything but the load.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from llmscope.simulator.models import SimModel

_TEXT = (
    "the signal of a stable process stays inside its limits while the mean holds and each sample "
    "of latency falls near the center line so a shift stands out when it comes and the chart "
    "shows it to the operator who reads the points in order and asks why the model slowed down"
)
_WORDS = tuple(_TEXT.split())

DEFAULT_MAX_TOKENS = 128


def count_tokens(text: str) -> int:
    """A rough token count (about four characters a token), at least one."""
    return max(1, math.ceil(len(text) / 4))


def natural_length(prompt: str) -> int:
    """How many tokens the model 'wants' to answer: fixed per prompt, like temperature 0."""
    return 24 + zlib.crc32(prompt.encode()) % 160 + count_tokens(prompt) // 2


@dataclass(frozen=True, slots=True)
class Plan:
    """When each part of a response is due, in seconds after the request arrived (already scaled)."""

    prompt_tokens: int
    tokens: tuple[str, ...]
    done_reason: str
    head_s: float
    load_s: float
    prompt_eval_s: float
    token_times: tuple[float, ...]
    """Offset of each output token; the first is the time to first token."""

    @property
    def eval_count(self) -> int:
        return len(self.tokens)

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] if self.token_times else self.head_s + self.load_s + self.prompt_eval_s

    @property
    def eval_s(self) -> float:
        """Generation time of all output tokens (Ollama's ``eval_duration``)."""
        return self.total_s - self.head_s - self.load_s - self.prompt_eval_s

    @property
    def total_s(self) -> float:
        return self.token_times[-1] if self.token_times else self.ttft_s

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def plan_request(
    model: SimModel,
    prompt: str,
    max_tokens: int | None,
    rng: np.random.Generator,
    *,
    cold: bool,
    load_wait_s: float = 0.0,
    factor: float = 1.0,
    time_scale: float = 1.0,
    empty: bool = False,
) -> Plan:
    """Draw the timings of one request for ``model`` (``load_wait_s`` is already scaled)."""

    def noisy(seconds: float) -> float:
        return float(seconds * rng.lognormal(0.0, model.sigma))

    prompt_tokens = count_tokens(prompt)
    limit = DEFAULT_MAX_TOKENS if max_tokens is None or max_tokens <= 0 else max_tokens
    wanted = natural_length(prompt)
    n_out = 0 if empty else min(limit, wanted)
    done_reason = "length" if wanted > limit and not empty else "stop"

    scale = time_scale
    head = noisy(model.overhead_s) * factor * scale
    # A request arriving while the model is still loading waits for the rest of that load.
    load = noisy(model.load_s) * scale if cold and model.load_s > 0 else load_wait_s
    prompt_eval = noisy(prompt_tokens / model.prompt_tokens_per_s) * factor * scale
    # One noise draw for the whole generation plus small per-token jitter: decode speed is steady
    # within a request but varies between requests.
    per_token = noisy(1.0 / model.tokens_per_s) * factor * scale
    jitter = rng.lognormal(0.0, model.sigma / 4, size=n_out) if n_out else np.empty(0)
    start = head + load + prompt_eval
    times = tuple(float(t) for t in start + np.cumsum(per_token * jitter))
    words = rng.integers(0, len(_WORDS), size=n_out) if n_out else np.empty(0, dtype=np.int64)
    tokens = tuple(("" if i == 0 else " ") + _WORDS[int(w)] for i, w in enumerate(words))
    return Plan(
        prompt_tokens=prompt_tokens,
        tokens=tokens,
        done_reason=done_reason,
        head_s=head,
        load_s=load,
        prompt_eval_s=prompt_eval,
        token_times=times,
    )
