"""Stopping the processes a test starts, so that none outlives it (tests/conftest.py reports any
that does)."""

from __future__ import annotations

import asyncio
import contextlib
import signal


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
