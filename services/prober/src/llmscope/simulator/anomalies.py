"""Injected anomalies and their combined effect on a request (pure: the clock is passed in).

Kinds (``factor`` multiplies every phase but the model load):
- ``spike``:   the next ``count`` matching requests (default 1) are ``factor`` (default 5) slower.
- ``shift``:   a level shift: matching requests are ``factor`` (default 2) slower until cleared.
- ``drift``:   the factor grows linearly from 1 to ``factor`` (default 2) over ``ramp_s``
               (default 60 s) and then holds.
- ``outage``:  matching requests fail with probability ``rate`` (default 1): ``mode`` ``error``
               answers HTTP ``status`` (default 500; 429, 503, 529 ...), ``hang`` never answers
               (until the client gives up), ``empty`` answers 200 with no content, ``garbage``
               answers 200 with a body that is not the API's JSON, ``truncate`` cuts a stream
               short after ``TRUNCATE_AFTER`` tokens with no finish reason (OpenAI: ``[DONE]``, as
               llama.cpp does under load; Ollama and Anthropic: the connection closes); answers
               that do not stream are whole.
- ``cascade``: every model on ``host`` is ``factor`` (default 3) slower together.
A ``model`` or ``host`` narrows an anomaly (none: every model); ``duration_s`` ends it by itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from llmscope.simulator.models import SimModel

AnomalyKind = Literal["spike", "shift", "drift", "outage", "cascade"]
OutageMode = Literal["error", "hang", "empty", "garbage", "truncate"]
ANOMALY_KINDS: tuple[AnomalyKind, ...] = ("spike", "shift", "drift", "outage", "cascade")
OUTAGE_MODES: tuple[OutageMode, ...] = ("error", "hang", "empty", "garbage", "truncate")
TRUNCATE_AFTER = 2
"""Tokens a ``truncate`` outage lets through before it cuts the stream."""

DEFAULT_FACTOR: dict[str, float] = {"spike": 5.0, "shift": 2.0, "drift": 2.0, "cascade": 3.0, "outage": 1.0}

Positive = Annotated[float, Meta(gt=0)]


class InjectRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /_sim/inject``."""

    kind: AnomalyKind
    model: str | None = None
    host: str | None = None
    factor: Positive | None = None
    duration_s: Positive | None = None
    ramp_s: Positive = 60.0
    count: Annotated[int, Meta(ge=1)] = 1
    status: Annotated[int, Meta(ge=400, le=599)] = 500
    mode: OutageMode = "error"
    rate: Annotated[float, Meta(ge=0, le=1)] = 1.0


@dataclass(slots=True)
class Anomaly:
    """An active anomaly."""

    id: int
    request: InjectRequest
    started_at: float
    expires_at: float | None
    remaining: int | None = None
    """Requests left for a spike."""

    @property
    def factor(self) -> float:
        return self.request.factor if self.request.factor is not None else DEFAULT_FACTOR[self.request.kind]

    def matches(self, model: SimModel) -> bool:
        req = self.request
        return (req.model is None or req.model == model.name) and (req.host is None or req.host == model.host)

    def factor_at(self, now: float) -> float:
        if self.request.kind == "drift":
            progress = min(1.0, max(0.0, (now - self.started_at) / self.request.ramp_s))
            return 1.0 + (self.factor - 1.0) * progress
        if self.request.kind == "outage":
            return 1.0
        return self.factor

    def describe(self, now: float) -> dict[str, object]:
        req = self.request
        out: dict[str, object] = {"id": self.id, "kind": req.kind, "model": req.model, "host": req.host}
        if req.kind == "outage":
            out.update(mode=req.mode, status=req.status, rate=req.rate)
        else:
            out.update(factor=self.factor, current_factor=round(self.factor_at(now), 4))
        if req.kind == "drift":
            out["ramp_s"] = req.ramp_s
        out["age_s"] = round(now - self.started_at, 3)
        if self.expires_at is not None:
            out["duration_s"] = req.duration_s
            out["remaining_s"] = round(max(0.0, self.expires_at - now), 3)
        if self.remaining is not None:
            out["remaining_requests"] = self.remaining
        return out


@dataclass(frozen=True, slots=True)
class Outage:
    mode: OutageMode
    status: int


@dataclass(frozen=True, slots=True)
class Effect:
    """What the active anomalies do to one request."""

    factor: float = 1.0
    outage: Outage | None = None
    anomaly_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class AnomalyBook:
    """The active anomalies; ``effect`` consumes spikes as requests arrive."""

    clock: Callable[[], float]
    _active: list[Anomaly] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, request: InjectRequest, models: Sequence[SimModel]) -> Anomaly:
        """Validate against the known models and activate; raises ValueError with the reason."""
        if request.kind == "cascade" and request.host is None:
            raise ValueError("a cascade needs a host")
        if request.model is not None and not any(m.name == request.model for m in models):
            raise ValueError(f"unknown model {request.model!r}")
        if request.host is not None and not any(m.host == request.host for m in models):
            raise ValueError(f"unknown host {request.host!r}")
        if (
            request.model is not None
            and request.host is not None
            and not any(m.name == request.model and m.host == request.host for m in models)
        ):
            raise ValueError(f"model {request.model!r} is not on host {request.host!r}")
        now = self.clock()
        anomaly = Anomaly(
            id=next(self._ids),
            request=request,
            started_at=now,
            expires_at=None if request.duration_s is None else now + request.duration_s,
            remaining=request.count if request.kind == "spike" else None,
        )
        self._active.append(anomaly)
        return anomaly

    def clear(self, anomaly_id: int | None = None) -> int:
        """Remove one anomaly (or all); returns how many were removed."""
        before = len(self._active)
        self._active = [a for a in self._active if anomaly_id is not None and a.id != anomaly_id]
        return before - len(self._active)

    def active(self) -> list[Anomaly]:
        now = self.clock()
        self._active = [
            a
            for a in self._active
            if (a.expires_at is None or now < a.expires_at) and (a.remaining is None or a.remaining > 0)
        ]
        return list(self._active)

    def effect(self, model: SimModel, draw: Callable[[], float]) -> Effect:
        """The combined effect on one request for ``model``; ``draw`` gives uniforms for ``rate``."""
        now = self.clock()
        factor = 1.0
        outage: Outage | None = None
        ids: list[int] = []
        for anomaly in self.active():
            if not anomaly.matches(model):
                continue
            if anomaly.request.kind == "outage":
                if outage is None and (anomaly.request.rate >= 1.0 or draw() < anomaly.request.rate):
                    outage = Outage(anomaly.request.mode, anomaly.request.status)
                    ids.append(anomaly.id)
                continue
            factor *= anomaly.factor_at(now)
            ids.append(anomaly.id)
            if anomaly.remaining is not None:
                anomaly.remaining -= 1
        return Effect(factor=factor, outage=outage, anomaly_ids=tuple(ids))
