"""Whether a new incident closely resembles a resolved one (pure).

Text similarity (``similar_incidents`` in the store) finds incidents that read alike; this is
stricter, and is what lets a message say "seen before, resolved by ...": the same place (host, or
provider when the targets carry no host label), the same models, and on each model the same
metrics moving the same way, by a similar amount. An incident that slows llama 2x does not
resemble one that slowed it 10x, nor one where qwen was slow too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmscope.proto.violation import ViolationEvent

THRESHOLD = 0.6
"""The least score that links an incident: sizes within about 1.7x of each other on average."""


@dataclass(frozen=True, slots=True)
class Signature:
    """What an incident did: where, and per (model, metric, direction) how far it moved."""

    provider: str
    host: str
    moves: tuple[tuple[tuple[str, str, str], float], ...]
    """((model, metric, direction), size) sorted by key; size is |change %|, else |sigma|"""

    @property
    def keys(self) -> frozenset[tuple[str, str, str]]:
        return frozenset(k for k, _ in self.moves)


def _direction(ev: ViolationEvent) -> str:
    if ev.direction:
        return ev.direction
    # Older engines (no direction field): the side of the center the point fell on.
    return "up" if ev.deviation_sigma >= 0 else "down"


def _size(ev: ViolationEvent) -> float:
    return abs(ev.change_pct) if ev.change_pct is not None else abs(ev.deviation_sigma)


def signature(events: Sequence[ViolationEvent]) -> Signature:
    """An incident's signature from its violations (the worst move per key)."""
    sizes: dict[tuple[str, str, str], float] = {}
    for ev in events:
        key = (ev.model, ev.metric, _direction(ev))
        sizes[key] = max(sizes.get(key, 0.0), _size(ev))
    hosts = sorted({e.host for e in events if e.host})
    return Signature(
        provider=events[0].provider if events else "",
        host=hosts[0] if hosts else "",
        moves=tuple(sorted(sizes.items())),
    )


def _ratio(a: float, b: float) -> float:
    if a == b:
        return 1.0
    return min(a, b) / max(a, b)


def resemblance(new: Signature, old: Signature) -> float:
    """0 (different) to 1 (the same place, models, metrics, directions and sizes)."""
    if not new.moves or new.keys != old.keys:
        return 0.0
    if new.host or old.host:
        if new.host != old.host:
            return 0.0
    elif new.provider != old.provider:
        return 0.0
    olds = dict(old.moves)
    # The geometric mean of the size ratios: one key twice as large costs as much as two keys
    # 1.41x as large, and any key of a wholly different size pulls the score down hard.
    product = 1.0
    for key, size in new.moves:
        product *= _ratio(size, olds[key])
    return float(product ** (1.0 / len(new.moves)))


def most_resembling(
    new: Signature, candidates: Iterable[tuple[str, Signature]], threshold: float = THRESHOLD
) -> tuple[str, float] | None:
    """The candidate (id, score) that resembles ``new`` best, at or above ``threshold``; the
    first of equal scores wins (the caller lists the most recent first)."""
    best: tuple[str, float] | None = None
    for cid, sig in candidates:
        score = resemblance(new, sig)
        if score >= threshold and (best is None or score > best[1]):
            best = (cid, score)
    return best
