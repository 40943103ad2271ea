"""The smoke runs of the benchmarks take no benchmark lock (``bench/one_at_a_time.py``): their
figures are not read, and a test must never wait for a benchmark somebody runs beside it."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_bench_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSCOPE_BENCH_LOCK", "off")
