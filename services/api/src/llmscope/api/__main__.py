"""``python -m llmscope.api`` (and ``llmscope api``): serve the API and dashboard with uvicorn.

Configuration comes from the environment; see :mod:`llmscope.api.settings` for every variable.
At start it waits for Postgres (a log line per attempt) and NATS, as long as they take, before it
listens; SIGINT or SIGTERM ends it at any time. Exit codes: 0 after a signal, 1 when Postgres
answers but refuses (bad password, no such database: one line naming host:port/database), 2 for
a configuration error or bad arguments, 3 when the port cannot be bound (uvicorn's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import uvicorn

from llmscope.api.app import create_app
from llmscope.api.runtime import Runtime
from llmscope.api.settings import ApiSettings
from llmscope.config.env import ConfigError, config_exit
from llmscope.config.envhelp import BUS_SETTINGS, service_parser
from llmscope.config.logs import get_logger, setup_logging
from llmscope.config.startup import Stopped, Unusable, stop_on_signals

log = get_logger("llmscope.api")


async def serve(config: uvicorn.Config, runtime: Runtime) -> int:
    """Open the runtime, then serve ``config.app`` until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        await runtime.start(stop)
    except Stopped:
        log.info("stopped during start-up")
        return 0
    try:
        server = uvicorn.Server(config)
        # _serve, not serve: serve() installs uvicorn's own signal handlers and re-raises the
        # signal after shutting down (exit 130/143), where every LLMscope service exits 0.
        serving = asyncio.create_task(server._serve())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        # Open event streams would hold uvicorn's graceful shutdown forever: end them first.
        runtime.live.close_all()
        server.should_exit = True
        stopping.cancel()
        await serving
    finally:
        await runtime.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = service_parser(
        "llmscope api",
        "LLMscope API, persister and dashboard. Configured by the environment; waits for "
        "Postgres and NATS at start; exits 0 on SIGINT/SIGTERM.",
        ApiSettings.__module__,
        BUS_SETTINGS,
    )
    parser.add_argument("--host", help="listen address (default: LLMSCOPE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: LLMSCOPE_PORT or 8000)")
    parser.add_argument("--no-persister", action="store_true", help="do not run the persister in-process")
    args = parser.parse_args(argv)
    try:
        settings = ApiSettings.from_env()
    except ConfigError as exc:
        return config_exit("api", exc)
    changes: dict[str, object] = {}
    if args.host:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.no_persister:
        changes["persister"] = False
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    setup_logging("api", settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        lifespan="on",
    )
    try:
        # uvicorn's own loop choice (uvloop when installed), as uvicorn.run would make.
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            return runner.run(serve(config, app.state.runtime))
    except Unusable as exc:
        print(f"llmscope api: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
