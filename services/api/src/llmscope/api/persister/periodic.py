"""The persister's background jobs (retention, the hourly fold): run now, then every period."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from llmscope.config.logs import get_logger

log = get_logger("llmscope.api.persister")


async def every(stop: asyncio.Event, every_s: float, job: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``job`` now and then every ``every_s`` seconds until ``stop``. A failure (Postgres
    away, a deadlock it broke) is logged and the job runs again at the next round."""
    while not stop.is_set():
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(f"{what} failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
