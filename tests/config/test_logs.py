"""Service logging: key=value lines on whatever stderr is current."""

from __future__ import annotations

import asyncio
import io
import logging
import sys

import asyncpg
import pytest

from llmscope.alerter.service import Alerter
from llmscope.config.logs import get_logger, setup_logging
from llmscope.stack.ports import free_ports


def test_lines_go_to_the_current_stderr_even_after_the_old_one_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging("svc")
    get_logger("llmscope.test").info("started", replica=1)
    assert "svc llmscope.test: started replica=1" in first.getvalue()
    first.close()  # as a test harness closes its capture

    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    get_logger("llmscope.test").warning("still here")
    assert "Logging error" not in second.getvalue()
    assert "svc llmscope.test: still here" in second.getvalue()


@pytest.fixture
def service_logs() -> None:
    """Logging as a service sets it up (setup_logging("svc")); the autouse ``restored_logging``
    (tests/conftest.py) undoes it after the test."""
    setup_logging("svc")


def _stderr(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What the service writes from now on (pytest swaps sys.stderr per phase: set it here)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    return out


async def _refused() -> None:
    """What PostgreSQL being away looks like to a service: a real refused connection."""
    [port] = free_ports(1)
    await asyncpg.connect(f"postgresql://nobody@127.0.0.1:{port}/none", timeout=5)


@pytest.mark.usefixtures("service_logs")
async def test_a_loop_logs_postgres_being_away_in_one_line_and_a_bug_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stderr = _stderr(monkeypatch)
    # While PostgreSQL restarted under `llmscope up`, each round of each of the alerter's loops
    # printed the same traceback: hundreds of lines in a second, over the supervisor's own line.
    stop = asyncio.Event()

    async def away() -> None:
        stop.set()
        await _refused()

    await Alerter._every(stop, 0.01, away, "dispatch")
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "svc llmscope.alerter: dispatch loop iteration failed; PostgreSQL unavailable" in lines[0]
    assert "ConnectionRefusedError" in lines[0]

    stop.clear()

    async def bug() -> None:
        stop.set()
        raise ValueError("not an outage")

    await Alerter._every(stop, 0.01, bug, "dispatch")
    out = stderr.getvalue()
    assert "error   svc llmscope.alerter: dispatch loop iteration failed\nTraceback" in out
    assert "ValueError: not an outage" in out


@pytest.mark.usefixtures("service_logs")
async def test_asyncpgs_failed_reconnects_are_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = _stderr(monkeypatch)
    # asyncpg's pool logs each failed attempt to restore its floor with the traceback.
    try:
        await _refused()
    except OSError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to restore the pool connection floor; retrying", exc_info=True
        )
    [line] = stderr.getvalue().splitlines()
    assert "svc asyncpg.pool: Failed to restore the pool connection floor; retrying error=" in line
    assert "ConnectionRefusedError" in line
