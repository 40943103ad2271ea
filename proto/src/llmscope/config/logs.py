"""Structured logs: ``ts level service msg key=value ...`` with context bound once per logger."""

from __future__ import annotations

import logging
import sys
from typing import Any

_RESERVED = {"exc_info", "stack_info", "stacklevel"}


class _KeyValueFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        ts = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        ctx: dict[str, Any] = getattr(record, "ctx", {})
        fields = " ".join(f"{k}={_fmt(v)}" for k, v in ctx.items())
        line = f"{ts} {record.levelname.lower():7} {self._service} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def _fmt(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class BoundLogger:
    """A logger carrying context (``model=… rule=…``) that every line repeats."""

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = context or {}

    def bind(self, **context: Any) -> BoundLogger:
        return BoundLogger(self._logger, {**self._context, **context})

    def _log(self, level: int, msg: str, kw: dict[str, Any]) -> None:
        if not self._logger.isEnabledFor(level):
            return
        options = {k: kw.pop(k) for k in list(kw) if k in _RESERVED}
        self._logger.log(level, msg, extra={"ctx": {**self._context, **kw}}, stacklevel=3, **options)

    def debug(self, msg: str, **kw: Any) -> None:
        self._log(logging.DEBUG, msg, kw)

    def info(self, msg: str, **kw: Any) -> None:
        self._log(logging.INFO, msg, kw)

    def warning(self, msg: str, **kw: Any) -> None:
        self._log(logging.WARNING, msg, kw)

    def error(self, msg: str, **kw: Any) -> None:
        self._log(logging.ERROR, msg, kw)

    def exception(self, msg: str, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, kw)


def get_logger(name: str, **context: Any) -> BoundLogger:
    return BoundLogger(logging.getLogger(name), context)


class _StderrHandler(logging.StreamHandler[Any]):
    """Writes to ``sys.stderr`` as it is at each record, not as it was at set-up: a harness
    that swaps stderr (pytest's capture, a daemoniser) and closes the old one must not turn
    every later line into a "Logging error"."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # StreamHandler.__init__ assigns one; the property always answers the current one


class _UnreachableAsOneLine(logging.Filter):
    """asyncpg's pool logs every failed reconnect with its traceback (the same one each time,
    PostgreSQL refusing connections while it restarts): one line naming the error is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (OSError, TimeoutError)):
            record.exc_info = None
            record.ctx = {**getattr(record, "ctx", {}), "error": repr(exc)}
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stderr in key=value form; called once by each service's main."""
    handler = _StderrHandler()
    handler.setFormatter(_KeyValueFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter at INFO drowns the service's own lines.
    for noisy in ("nats", "asyncio", "aiohttp.access", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _UnreachableAsOneLine) for f in pool.filters):
        pool.addFilter(_UnreachableAsOneLine())
