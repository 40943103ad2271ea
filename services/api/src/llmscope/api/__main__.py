"""``python -m llmscope.api`` (and ``llmscope api``): serve the API and dashboard with uvicorn.

Configuration comes from the environment; see :mod:`llmscope.api.settings` for every variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import uvicorn

from llmscope.api.app import create_app
from llmscope.api.settings import ApiSettings
from llmscope.config.env import ConfigError
from llmscope.config.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmscope api", description="LLMscope API, persister and dashboard")
    parser.add_argument("--host", help="listen address (default: LLMSCOPE_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: LLMSCOPE_PORT or 8000)")
    parser.add_argument("--no-persister", action="store_true", help="do not run the persister in-process")
    args = parser.parse_args(argv)
    try:
        settings = ApiSettings.from_env()
    except ConfigError as exc:
        print(f"llmscope api: {exc}", file=sys.stderr)
        return 2
    changes: dict[str, object] = {}
    if args.host:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = args.port
    if args.no_persister:
        changes["persister"] = False
    settings = dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
    setup_logging("api", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
