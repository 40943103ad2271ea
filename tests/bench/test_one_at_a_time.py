"""``bench/one_at_a_time.py``: a second benchmark waits for the first, says for whom, then runs."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.one_at_a_time import one_at_a_time


def test_a_second_benchmark_waits_for_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMSCOPE_BENCH_LOCK", str(tmp_path / "lock"))
    order: list[str] = []
    first_in, release = threading.Event(), threading.Event()

    def first() -> None:
        with one_at_a_time("first_bench.py"):
            order.append("first in")
            first_in.set()
            release.wait(60)
            order.append("first out")

    def second() -> None:
        first_in.wait(60)
        with one_at_a_time("second_bench.py"):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    said = ""
    deadline = time.monotonic() + 60
    while "second_bench.py: waiting for first_bench.py" not in said and time.monotonic() < deadline:
        said += capsys.readouterr().err
        time.sleep(0.01)  # polling for the second's message, not a timed expectation
    assert "second_bench.py: waiting for first_bench.py (pid" in said
    assert order == ["first in"]
    release.set()
    for t in threads:
        t.join(60)
    assert order == ["first in", "first out", "second in"]
    assert "second_bench.py: waited" in capsys.readouterr().err
    assert (tmp_path / "lock").read_text() == ""  # nobody holds it


def test_off_takes_no_lock(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMSCOPE_BENCH_LOCK", "off")
    with one_at_a_time("a.py"), one_at_a_time("b.py"):  # nested: would wait forever with a lock
        pass
