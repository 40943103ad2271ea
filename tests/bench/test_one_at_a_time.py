"""``bench/one_at_a_time.py``: a second benchmark waits for the first, says for whom, then runs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.one_at_a_time import one_at_a_time, run_alone


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


def test_run_alone_runs_main_under_the_lock_and_exits_with_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "lock"
    monkeypatch.setenv("LLMSCOPE_BENCH_LOCK", str(lock))
    monkeypatch.setattr(sys, "argv", ["some_bench.py", "--quick"])
    held: list[str] = []

    def main() -> int:
        held.append(lock.read_text())
        return 3

    with pytest.raises(SystemExit) as exited:
        run_alone(main, "/somewhere/bench/some_bench.py")
    assert exited.value.code == 3
    assert held[0].startswith("some_bench.py (pid ")
    assert lock.read_text() == ""


SCRIPTS = sorted(
    p.name
    for p in (Path(__file__).resolve().parents[2] / "bench").glob("*.py")
    if "run_alone(main, __file__)" in p.read_text()
)


@pytest.mark.parametrize("script", [*SCRIPTS, "traffic_centre.py"])
def test_a_benchmarks_help_answers_while_another_runs(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each benchmark's ``if __name__ == "__main__"`` is ``run_alone`` (the lock's boilerplate
    once), and its ``--help`` waits for no benchmark running beside it."""
    assert len(SCRIPTS) >= 11
    lock = tmp_path / "lock"
    monkeypatch.setenv("LLMSCOPE_BENCH_LOCK", str(lock))
    with one_at_a_time("running_bench.py"):
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve().parents[2] / "bench" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: "), out.stdout
    assert "waiting for" not in out.stderr
