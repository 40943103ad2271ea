"""``llmscope spc-engine`` / ``python -m llmscope.spc_engine``: the SPC engine service.

Settings come from the environment (:mod:`llmscope.spc_engine.settings`). SIGINT/SIGTERM set a
stop event: the batch in hand finishes, charts are snapshotted, the connection drains. Exit
codes: 0 after a signal, 1 when a violation could not be published (restart to replay), 2 for a
configuration error.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from llmscope.config.env import ConfigError
from llmscope.config.health import HealthServer
from llmscope.config.logs import get_logger, setup_logging
from llmscope.spc_engine.service import serve
from llmscope.spc_engine.settings import SpcSettings

log = get_logger("llmscope.spc_engine")


async def _main(settings: SpcSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = None
    if settings.health_port:
        health = HealthServer(settings.health_host, settings.health_port, ready=lambda: not stop.is_set())
        await health.start()
    try:
        return await serve(settings, stop)
    finally:
        if health is not None:
            await health.stop()


def main() -> None:
    try:
        settings = SpcSettings.from_env()
    except ConfigError as exc:
        print(f"llmscope spc-engine: {exc}", file=sys.stderr)
        sys.exit(2)
    setup_logging("spc-engine", settings.log_level)
    log.info("starting", replica=settings.replica, replicas=settings.replicas, baseline_n=settings.baseline_n)
    sys.exit(asyncio.run(_main(settings)))


if __name__ == "__main__":
    main()
