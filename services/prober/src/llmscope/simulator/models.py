"""The simulated models: who they are, where they run and how fast they are."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

Flavour = Literal["ollama", "openai", "anthropic"]
FLAVOURS: tuple[Flavour, ...] = ("ollama", "openai", "anthropic")


@dataclass(frozen=True, slots=True)
class SimModel:
    """One model served by the simulator; every duration is in seconds before time scaling."""

    name: str
    host: str
    flavour: Flavour = "ollama"
    tokens_per_s: float = 45.0
    prompt_tokens_per_s: float = 900.0
    overhead_s: float = 0.025
    load_s: float = 0.0
    sigma: float = 0.08
    """Spread of the lognormal noise on each phase (log-space standard deviation)."""
    keep_alive_s: float = 300.0
    """Idle time after which the model is unloaded and the next request pays ``load_s`` again."""


DEFAULT_MODELS: tuple[SimModel, ...] = (
    SimModel(name="llama3.1:8b", host="sim-gpu-1", flavour="ollama", tokens_per_s=45.0, load_s=1.8),
    SimModel(
        name="qwen2.5:7b",
        host="sim-gpu-1",
        flavour="ollama",
        tokens_per_s=52.0,
        prompt_tokens_per_s=1000.0,
        load_s=1.5,
    ),
    SimModel(
        name="gpt-4o-mini",
        host="sim-openai",
        flavour="openai",
        tokens_per_s=80.0,
        prompt_tokens_per_s=4000.0,
        overhead_s=0.25,
        sigma=0.12,
    ),
    SimModel(
        name="claude-3-5-haiku",
        host="sim-anthropic",
        flavour="anthropic",
        tokens_per_s=65.0,
        prompt_tokens_per_s=3000.0,
        overhead_s=0.35,
        sigma=0.12,
    ),
)

_NUMERIC = {f.name for f in fields(SimModel)} - {"name", "host", "flavour"}


def parse_model_spec(spec: str) -> SimModel:
    """Parse ``NAME@HOST[;key=value...]``, e.g. ``llama3.1:8b@gpu-1;tokens_per_s=40;load_s=2``.

    Keys are the :class:`SimModel` fields (``flavour``, ``tokens_per_s``, ``prompt_tokens_per_s``,
    ``overhead_s``, ``load_s``, ``sigma``, ``keep_alive_s``). Raises ValueError saying what is wrong.
    """
    head, *options = [part.strip() for part in spec.strip().split(";")]
    name, sep, host = head.rpartition("@")
    if not sep or not name or not host:
        raise ValueError(f"model spec {spec!r}: expected NAME@HOST[;key=value...]")
    model = SimModel(name=name, host=host)
    for option in options:
        if not option:
            continue
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"model spec {spec!r}: option {option!r} is not key=value")
        if key == "flavour":
            if value not in FLAVOURS:
                raise ValueError(f"model spec {spec!r}: flavour must be one of {', '.join(FLAVOURS)}")
            model = replace(model, flavour=value)
        elif key in _NUMERIC:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"model spec {spec!r}: {key}={value!r} is not a number") from None
            if not number >= 0 or (key.endswith("per_s") and number <= 0):
                raise ValueError(f"model spec {spec!r}: {key}={value!r} is out of range")
            model = replace(model, **{key: number})  # type: ignore[arg-type]
        else:
            raise ValueError(f"model spec {spec!r}: unknown option {key!r}")
    return model
