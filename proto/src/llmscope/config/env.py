"""Typed, validated reads of environment variables.

Every service builds its settings once at start-up from an :class:`Env`; a bad value stops the
service with a :class:`ConfigError` that names the variable, what it holds and what it should hold.
"""

from __future__ import annotations

import builtins
import os
import sys
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


CONFIG_EXIT = 2
"""The exit status of every command refused at start-up for its configuration."""


def config_exit(command: str, exc: ConfigError) -> int:
    """Print the one start-up line every command words the same way, and return its exit status.

    ``llmscope <command>: configuration error: <the error, which names the variable>``, on stderr;
    the caller returns the status (2) from its ``main``.
    """
    print(f"llmscope {command}: configuration error: {exc}", file=sys.stderr)
    return CONFIG_EXIT


class Secret:
    """A credential that never shows up in logs, reprs or API responses."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Env:
    """Reads variables from a mapping (``os.environ`` by default, a dict in tests)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def optional_text(self, name: str) -> str | None:
        return self.raw(name)

    def secret(self, name: str, default: str = "") -> Secret:
        return Secret(self.text(name, default))

    def secret_url(self, name: str, *, schemes: tuple[str, ...] = ("http", "https")) -> Secret:
        """A URL that is a credential (a webhook's path is its key): checked like :meth:`url`,
        and a bad one is refused without its value in the message."""
        value = self.secret(name)
        parsed = urlsplit(value.get())
        if value and (parsed.scheme not in schemes or not parsed.hostname):
            raise ConfigError(
                f"{name}: expected a URL starting with "
                + " or ".join(f"{s}://" for s in schemes)
                + " (the value is a secret: not shown)"
            )
        return value

    def integer(self, name: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = int(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r}: expected an integer") from None
        return _bounded(name, parsed, min, max)

    def number(
        self, name: str, default: float, *, min: float | None = None, max: float | None = None
    ) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r}: expected a number") from None
        if parsed != parsed or parsed in (float("inf"), float("-inf")):
            raise ConfigError(f"{name}={value!r}: expected a finite number")
        return _bounded(name, parsed, min, max)

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}={value!r}: expected one of true/false, 1/0, yes/no, on/off")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value

    def url(self, name: str, default: str | None, *, schemes: tuple[str, ...]) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        for part in value.split(","):
            parsed = urlsplit(part.strip())
            if parsed.scheme not in schemes or not (parsed.hostname or parsed.path):
                raise ConfigError(
                    f"{name}={_redact(value)!r}: expected a URL starting with "
                    + " or ".join(f"{s}://" for s in schemes)
                )
        return value

    def items(self, name: str, default: builtins.tuple[str, ...] = ()) -> builtins.tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        return tuple(item.strip() for item in value.split(",") if item.strip())


def _bounded(name: str, value: T, lo: T | None, hi: T | None) -> T:
    if lo is not None and value < lo:  # type: ignore[operator]
        raise ConfigError(f"{name}={value}: must be >= {lo}")
    if hi is not None and value > hi:  # type: ignore[operator]
        raise ConfigError(f"{name}={value}: must be <= {hi}")
    return value


def _redact(url: str) -> str:
    """Hide a password inside a URL before it reaches an error message."""
    parsed = urlsplit(url)
    if parsed.password:
        return url.replace(parsed.password, "****")
    return url


def redact_url(url: str) -> str:
    """``url``, or a comma-separated list of URLs, with every password replaced by ``****``."""
    return ",".join(_redact(part) for part in url.split(","))
