"""The failed-authentication bucket alone, on an injected clock (issue 9, finding 7)."""

from __future__ import annotations

from llmscope.api.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_try_per_refill() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, 60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.fail("a")
    assert limiter.retry_after("a") == 20  # one token back every 60 / 3 s
    assert limiter.retry_after("b") is None  # per client
    clock.now += 19.5
    assert limiter.retry_after("a") == 1
    clock.now += 0.5
    assert limiter.retry_after("a") is None
    limiter.fail("a")
    assert limiter.retry_after("a") == 20
    clock.now += 600
    for _ in range(3):  # a full bucket again, never more than the burst
        assert limiter.retry_after("a") is None
        limiter.fail("a")
    assert limiter.retry_after("a") is not None


def test_zero_turns_it_off_and_the_table_stays_bounded() -> None:
    off = FailureLimiter(0, 60)
    for _ in range(100):
        off.fail("a")
    assert off.retry_after("a") is None
    clock = Clock()
    limiter = FailureLimiter(2, 60, clock=clock, max_clients=100)
    for i in range(1000):
        limiter.fail(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) <= 100
    clock.now -= 50  # a wall clock stepping back refills nothing and breaks nothing
    limiter.fail("x")
    limiter.fail("x")
    assert limiter.retry_after("x") is not None
