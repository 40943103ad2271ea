"""One benchmark at a time on this machine: each measuring script holds an exclusive lock while it
runs, so two never spoil each other's figures (two whole-stack benches at once pushed a bare
endpoint's own p99 from a few ms to 10-158 ms). A second one waits, says for whom, and says how
long it waited. Tests and other work are not held back: the load average printed beside the
figures still tells of them.

``LLMSCOPE_BENCH_LOCK``: the lock file (default ``llmscope-bench.lock`` in the temporary
directory); ``off`` for none (the test suite's smoke runs, whose figures nobody reads, so a test
never waits for a benchmark somebody runs beside it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

LOCK = Path(tempfile.gettempdir()) / "llmscope-bench.lock"


@contextlib.contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """Hold the machine's benchmark lock while the block runs (wait for it first if taken)."""
    where = os.environ.get("LLMSCOPE_BENCH_LOCK") or str(LOCK)
    if where == "off":
        yield
        return
    with open(where, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another benchmark"
            print(f"{name}: waiting for {holder} to finish", file=sys.stderr, flush=True)
            started = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"{name}: waited {time.monotonic() - started:.0f} s for it", file=sys.stderr, flush=True)
        f.seek(0)
        f.truncate()
        f.write(f"{name} (pid {os.getpid()}, since {datetime.now(UTC):%H:%M:%S} UTC)\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def run_alone(main: Callable[[], int | None], script: str) -> NoReturn:
    """A benchmark's ``if __name__ == "__main__"``: ``main`` under the lock, named for its
    ``script`` (``__file__``), then exit with what it returned. Asked for its ``--help``, it
    answers at once, waiting for no other benchmark."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        raise SystemExit(main())
    with one_at_a_time(Path(script).name):
        raise SystemExit(main())
