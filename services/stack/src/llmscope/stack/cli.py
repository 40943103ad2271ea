"""``llmscope``: one command for the whole stack and for each service alone.

llmscope up                      embedded NATS + Postgres (unless NATS_URL / DATABASE_URL),
                                 simulator, prober, SPC engine, alerter and API
llmscope api|prober|spc-engine|alerter [ARGS]   one service, configured by environment
llmscope persister               the API's persister alone (beside APIs with LLMSCOPE_PERSISTER=false)
llmscope sim serve|inject ...    the simulated LLM endpoint and its anomaly injection
llmscope spc analyze FILE ...    offline SPC analysis of a CSV, same chart code as the service
llmscope deadletter list|show|replay   messages no service could take: inspect, replay once fixed
llmscope setup                   create or update every stream and bucket (as the setup user)
"""

from __future__ import annotations

import importlib
import inspect
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

# command -> module whose ``main`` runs it; imported lazily so one service's import cost and
# dependencies never burden another's start.
SERVICES: dict[str, str] = {
    "api": "llmscope.api.__main__",
    "persister": "llmscope.api.persister",
    "prober": "llmscope.prober.__main__",
    "spc-engine": "llmscope.spc_engine.__main__",
    "alerter": "llmscope.alerter.__main__",
    "sim": "llmscope.simulator.__main__",
}
SPC_COMMANDS: dict[str, str] = {
    "analyze": "llmscope.spc_engine.analyze",
    "rebaseline": "llmscope.spc_engine.rebaseline",
}


def _run_main(module_name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"llmscope: {module_name} is not installed in this environment", file=sys.stderr)
            return 2
        raise
    main: Callable[..., int | None] = module.main
    accepts_argv = bool(inspect.signature(main).parameters)
    if accepts_argv:
        result = main(argv)
    else:
        sys.argv = [module_name, *argv]
        result = main()
    return int(result or 0)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _run_service(module_name: str, argv: list[str]) -> int:
    """Run a service; a signal before it installed its own handlers also ends it with 0."""
    # A service sets its handlers once imported and configured (about a second); a SIGTERM or
    # Ctrl-C before that must end it as quietly as one after: exit 0, no traceback.
    previous = signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        return _run_main(module_name, argv)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def usage() -> str:
    return (__doc__ or "").strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "up":
        from llmscope.stack.up import main as up_main

        return up_main(rest)
    if command in SERVICES:
        return _run_service(SERVICES[command], rest)
    if command == "deadletter":
        return _run_main("llmscope.stack.deadletter", rest)
    if command == "setup":
        return _run_main("llmscope.stack.setup", rest)
    if command == "spc":
        if not rest or rest[0] not in SPC_COMMANDS:
            asked = bool(rest) and rest[0] in ("-h", "--help")
            text = f"usage: llmscope spc {{{','.join(SPC_COMMANDS)}}} ..."
            print(text, file=sys.stdout if asked else sys.stderr)
            return 0 if asked else 2
        return _run_main(SPC_COMMANDS[rest[0]], rest[1:])
    print(f"llmscope: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
