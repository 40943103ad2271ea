"""Stopping the processes a test starts, so that none outlives it (tests/conftest.py reports any
that does)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from llmscope.stack.lifetime import die_with_parent


def tied() -> dict[str, Any]:
    """Keyword arguments for ``asyncio.create_subprocess_exec`` (or ``subprocess.Popen``): the
    child gets SIGKILL when the test process dies (Linux), so a pytest killed mid-test (a CI
    step's timeout, SIGKILL) leaves no SPC engine charting on. Fork from the thread that lives
    as long as the child (the event loop's)."""
    return {"preexec_fn": die_with_parent(signal.SIGKILL)}


async def stop_process(
    proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, within: float = 20.0
) -> int | None:
    """Send ``sig`` and wait up to ``within`` seconds for ``proc`` to exit: its exit code, or None
    when it had not exited by then and was killed (SIGKILL, waited for). Safe in a ``finally``:
    whatever the test's outcome, the process is gone when this returns."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return None
    return proc.returncode
