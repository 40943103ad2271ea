"""A target as the dashboard prints it: the password of a URL's userinfo, and the values of the
query parameters that carry secrets, hidden.

What is hidden and how is the shared rule of :mod:`llmscope.proto.redaction` (re-exported here,
so the pages' call sites keep their names): the dashboard is read on shared screens, in
screenshots and in printed reports, so every place that prints a target prints
``https://bot:•••3fa2@gateway.example/v1`` for ``https://bot:s3cret@gateway.example/v1``, and
``https://gw.example/v1?key=•••81c0`` for a key in the query string. Exports (CSV, JSON) keep the
stored value: they are what a script reads back.

The four hex digits after ``•••`` are a keyed fingerprint of the hidden value: the first 16 bits
of HMAC-SHA256(installation key, value as written). Two targets told apart only by their secrets
(two keys of one gateway) print apart, and a link to the second reaches the second. The key is
random, made by Postgres when the API's migration 0021 ran, kept in the API's database and never
printed, sent or logged; every API replica loads the same one at start, so a page, a link and a
printed report name the same target in every replica and after a restart. Without the key a
fingerprint tells nothing of the secret: a guess of a weak password cannot be checked against a
screenshot, and the same secret prints unlike fingerprints in two installations. It does tell,
within one installation, that two targets with the same fingerprint most likely share a secret
(and two with different ones do not). Anyone who reads the key (the database, which holds the
stored targets and their secrets anyway) can test guesses against it; so can one who may both
send probes (the ingest key: a target of their own with a guessed secret prints its fingerprint)
and read the dashboard, one guess per target sent.

The key is a process-wide setting, set once by the API's start-up (:func:`use_fingerprint_key`,
from ``Runtime.start``) and dropped at its close, rather than an argument threaded through every
filter, chart label and route that prints a target (a dozen modules, down to SVG titles): one API
process serves one installation, so there is one key per process, and a forgotten call site
cannot print another. With no key (a unit test without a database, a process that never loaded
one) the hidden value prints as ``•••`` alone, never an unkeyed hash.

Links, forms and the address bar carry a target (or a chart key, which holds one) as printed too:
a secret in a URL lands in browser history, access logs and Referer headers. The route that
receives one maps it back to the stored target it stands for with :func:`stored_target` (or
:func:`stored_chart_key`), among the targets it knows; a link printed before fingerprints
(``•••`` alone) still reaches the first target it stands for. A link printed with the unkeyed
fingerprints of the hour before keyed ones (commit bb12e91) reaches none: it was never released
beyond that hour.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmscope.proto.charts import chart_key, parse_chart_key
from llmscope.proto.redaction import (
    FINGERPRINT_HEX,
    HIDDEN,
    SECRET_PARAMETERS,
    has_fingerprints,
    redacted,
    without_fingerprints,
)
from llmscope.proto.redaction import hidden as _hidden

__all__ = [
    "FINGERPRINT_HEX",
    "HIDDEN",
    "SECRET_PARAMETERS",
    "fingerprint_key",
    "hidden",
    "printed_chart_key",
    "release_fingerprint_key",
    "stored_chart_key",
    "stored_target",
    "use_fingerprint_key",
    "without_password",
]


class _InstallationKey:
    """The installation's fingerprint key while the API runs (see the module's docstring)."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key: bytes | None = None

    def __repr__(self) -> str:
        return "_InstallationKey(set)" if self.key else "_InstallationKey(None)"


_INSTALLATION = _InstallationKey()


def use_fingerprint_key(key: bytes | None) -> None:
    """Print fingerprints under ``key`` from now on (the API's start-up; None: ``•••`` alone)."""
    _INSTALLATION.key = key


def release_fingerprint_key(key: bytes | None) -> None:
    """Stop using ``key`` if it is still the one in use (the API's close): what prints targets
    afterwards in this process (the next test) prints ``•••`` alone until a key is set again."""
    if _INSTALLATION.key == key:
        _INSTALLATION.key = None


def fingerprint_key() -> bytes | None:
    """The key in use, None when none was set."""
    return _INSTALLATION.key


def without_password(target: object) -> str:
    """``target`` as printed: :func:`llmscope.proto.redaction.redacted` under the installation's
    key (``•••`` alone when none is set)."""
    return redacted(target, _INSTALLATION.key)


def hidden(secret: str) -> str:
    """What is printed for ``secret``: :data:`HIDDEN` and its fingerprint under the installation's
    key (``•••`` alone when none is set); a value printed already is returned as it is."""
    return _hidden(secret, _INSTALLATION.key)


def stored_target(printed: str, stored: Iterable[str]) -> str | None:
    """The stored target that ``printed`` (a target as the pages print it, or a stored one, as an
    old bookmark holds) stands for; None if it stands for none of ``stored``. Two stored targets
    printed alike (the same URL, secrets whose fingerprints collide, one chance in 65,536; or a
    link printed before fingerprints, ``•••`` alone): the first."""
    targets = list(stored)
    if printed in targets:
        return printed
    found = next((t for t in targets if without_password(t) == printed), None)
    if found is None and not has_fingerprints(printed):
        found = next((t for t in targets if without_fingerprints(without_password(t)) == printed), None)
    return found


def printed_chart_key(key: str) -> str:
    """A chart key with its target printed (:func:`without_password`), for a link or a form;
    anything that is no chart key is returned as it is."""
    try:
        provider, model, target, prompt_id, metric = parse_chart_key(key)
    except ValueError:
        return key
    return chart_key(provider, model, without_password(target), prompt_id, metric)


def stored_chart_key(printed: str, stored_targets: Iterable[str]) -> str:
    """The chart key that ``printed`` (from :func:`printed_chart_key`) stands for, its target one
    of ``stored_targets``; ``printed`` itself when none fits (the engine then answers: no such
    chart)."""
    try:
        provider, model, target, prompt_id, metric = parse_chart_key(printed)
    except ValueError:
        return printed
    found = stored_target(target, stored_targets)
    return printed if found is None else chart_key(provider, model, found, prompt_id, metric)
