from __future__ import annotations

import pytest

from llmscope.simulator.anomalies import AnomalyBook, InjectRequest
from llmscope.simulator.models import SimModel

A = SimModel(name="a", host="gpu-1")
B = SimModel(name="b", host="gpu-1")
C = SimModel(name="c", host="gpu-2")
MODELS = [A, B, C]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _book() -> tuple[AnomalyBook, Clock]:
    clock = Clock()
    return AnomalyBook(clock), clock


def test_spike_hits_count_requests_then_ends() -> None:
    book, _ = _book()
    book.add(InjectRequest(kind="spike", model="a", count=2), MODELS)
    factors = [book.effect(A, lambda: 0.0).factor for _ in range(3)]
    assert factors == [5.0, 5.0, 1.0]
    assert book.active() == []


def test_shift_until_duration_and_only_its_model() -> None:
    book, clock = _book()
    book.add(InjectRequest(kind="shift", model="a", factor=2.5, duration_s=10), MODELS)
    assert book.effect(A, lambda: 0.0).factor == 2.5
    assert book.effect(B, lambda: 0.0).factor == 1.0
    clock.now += 10.5
    assert book.effect(A, lambda: 0.0).factor == 1.0


def test_drift_ramps_then_holds() -> None:
    book, clock = _book()
    book.add(InjectRequest(kind="drift", model="a", factor=3.0, ramp_s=20), MODELS)
    seen = []
    for _ in range(4):
        seen.append(book.effect(A, lambda: 0.0).factor)
        clock.now += 10
    assert seen == pytest.approx([1.0, 2.0, 3.0, 3.0])


def test_cascade_hits_every_model_on_the_host() -> None:
    book, _ = _book()
    book.add(InjectRequest(kind="cascade", host="gpu-1"), MODELS)
    assert [book.effect(m, lambda: 0.0).factor for m in MODELS] == [3.0, 3.0, 1.0]


def test_outage_rate_and_mode() -> None:
    book, _ = _book()
    book.add(InjectRequest(kind="outage", model="c", status=429, rate=0.5), MODELS)
    hit = book.effect(C, lambda: 0.2).outage
    assert hit is not None
    assert (hit.mode, hit.status) == ("error", 429)
    assert book.effect(C, lambda: 0.7).outage is None


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (InjectRequest(kind="cascade"), "needs a host"),
        (InjectRequest(kind="shift", model="zzz"), "unknown model"),
        (InjectRequest(kind="shift", host="zzz"), "unknown host"),
        (InjectRequest(kind="shift", model="c", host="gpu-1"), "not on host"),
    ],
)
def test_invalid_targets_are_refused(request_: InjectRequest, reason: str) -> None:
    book, _ = _book()
    with pytest.raises(ValueError, match=reason):
        book.add(request_, MODELS)


def test_clear_one_or_all() -> None:
    book, _ = _book()
    first = book.add(InjectRequest(kind="shift"), MODELS)
    book.add(InjectRequest(kind="shift", model="a"), MODELS)
    assert book.clear(first.id) == 1
    assert book.clear(999) == 0
    assert book.clear() == 1
    assert book.effect(A, lambda: 0.0).factor == 1.0
