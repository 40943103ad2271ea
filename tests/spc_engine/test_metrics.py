"""Which partitions have no owner, from lease reads (a fake clock): pure, no NATS."""

from __future__ import annotations

from llmscope.spc_engine.metrics import Ownership


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_free_or_unchanged_for_two_ttls_has_no_owner() -> None:
    clock = Clock()
    own = Ownership(ttl=10, clock=clock)
    for t in range(0, 31, 2):  # partition 0 renewed every 2 s; 1 free; 2 held but never renewed
        clock.now = t
        own.observe(0, "0-of-2@a", revision=100 + t)
        own.observe(1, None, 0)
        own.observe(2, "1-of-2@b", revision=7)
        if t == 18:
            assert own.unowned() == {}  # not yet two TTLs
    assert own.unowned() == {1: 30.0, 2: 30.0}
    assert own.holders == {0: "0-of-2@a", 2: "1-of-2@b"}
    clock.now = 32
    own.observe(1, "0-of-2@a", revision=9)  # taken at last
    own.observe(2, None, 0)  # released: free from now on
    assert own.unowned() == {}
    clock.now = 52
    own.observe(0, "0-of-2@a", revision=200)
    own.observe(1, "0-of-2@a", revision=50)
    own.observe(2, None, 0)
    assert own.unowned() == {2: 20.0}


def test_after_a_failed_read_staleness_is_measured_afresh() -> None:
    clock = Clock()
    own = Ownership(ttl=1, clock=clock)
    own.observe(0, "h", revision=3)
    clock.now = 60  # NATS was away: nobody could renew
    own.forget()
    own.observe(0, "h", revision=3)
    assert own.unowned() == {}
