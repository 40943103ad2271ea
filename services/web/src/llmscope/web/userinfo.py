"""A target as the dashboard prints it: the password of a URL's userinfo, and the values of the
query parameters that carry secrets, hidden.

A gateway's URL may carry credentials (``https://bot:s3cret@gateway.example/v1``); the dashboard
is read on shared screens, in screenshots and in printed reports, so every place that prints a
target prints ``https://bot:•••@gateway.example/v1``. As pip's ``redact_auth_from_url`` does, a
userinfo without a colon is hidden whole (``https://•••@host``): a lone name there is most often
a token. Gateways that take their key in the query string (Azure's ``api-key``, Google's ``key``,
a signed URL's ``sig``) are printed ``https://gw.example/v1?key=•••``: the parameter's name is
kept, its value hidden, the rest of the query as written. A value that is itself a URL or a
path with a query (a gateway's ``?redirect=https://h/cb?api_key=…`` or ``?next=/x%3Ftoken%3D…``)
has its secrets hidden the same way, its query as written or percent-encoded; one nested in a way
not followed here (deeper than ``_MAX_NESTING``, a percent-encoded userinfo) is hidden whole.
Exports (CSV, JSON) keep the stored value: they are what a script reads back.

Each hidden value is printed with a short fingerprint of itself (``•••3fa2``: 16 bits of a
SHA-256 of the value as written), so two targets told apart only by their secrets (two keys of
one gateway) print apart, and a link to the second reaches the second. The fingerprint is stable
(the same on every page, every process, every release) and tells nothing useful of a key; of a
weak password it tells what 16 bits can: one guess in 65,536 matches it by chance, so it narrows
a dictionary, never confirms a guess. The same secret in two targets prints the same
fingerprint. A printed value (``•••`` alone, as printed before, or with its fingerprint) is
printed as it is.

Links, forms and the address bar carry a target (or a chart key, which holds one) as printed too:
a secret in a URL lands in browser history, access logs and Referer headers. The route that
receives one maps it back to the stored target it stands for with :func:`stored_target` (or
:func:`stored_chart_key`), among the targets it knows; a link printed before fingerprints
(``•••`` alone) still reaches the first target it stands for.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_plus

from llmscope.proto.charts import chart_key, parse_chart_key

HIDDEN: Final = "•••"
FINGERPRINT_HEX: Final = 4
_PRINTED: Final = re.compile(f"{HIDDEN}(?:[0-9a-f]{{{FINGERPRINT_HEX}}})?")
_FINGERPRINTS: Final = re.compile(f"(?<={HIDDEN})[0-9a-f]{{{FINGERPRINT_HEX}}}")
_AUTHORITY: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)")
# Query parameters whose value is a credential, compared without case, "-" and "_" alike.
SECRET_PARAMETERS: Final = frozenset(
    {
        "key",
        "apikey",
        "xapikey",
        "token",
        "accesstoken",
        "authtoken",
        "sig",
        "signature",
        "password",
        "secret",
        "clientsecret",
    }
)
# One parameter of a query: its name up to "=", its value up to the next "&" or ";".
# How deep a URL nested in a query value (in a value of its own query...) is followed.
_MAX_NESTING: Final = 4
_MARK: Final = re.compile(r"\?|%(?P<twice>(?:25)*)3[Ff]")


def without_password(target: object) -> str:
    """``target`` (a URL or any name) with its userinfo's password, or a lone user, and the values
    of its secret query parameters (``SECRET_PARAMETERS``) hidden, those of a URL in a query value
    too (``?next=/x?token=•••``, ``?redirect=https%3A%2F%2Fh%2Fcb%3Fkey%3D•••``)."""
    text = "" if target is None else str(target)
    return _without_query_secrets(_without_userinfo(text))


def hidden(secret: str) -> str:
    """What is printed for ``secret``: :data:`HIDDEN` and its fingerprint (see the module's
    docstring); a value printed already is returned as it is."""
    if _PRINTED.fullmatch(secret):
        return secret
    digest = hashlib.sha256(b"llmscope.target-secret\x00" + secret.encode(errors="surrogatepass"))
    return HIDDEN + digest.hexdigest()[:FINGERPRINT_HEX]


def stored_target(printed: str, stored: Iterable[str]) -> str | None:
    """The stored target that ``printed`` (a target as the pages print it, or a stored one, as an
    old bookmark holds) stands for; None if it stands for none of ``stored``. Two stored targets
    printed alike (the same URL, secrets whose fingerprints collide, one chance in 65,536; or a
    link printed before fingerprints, ``•••`` alone): the first."""
    targets = list(stored)
    if printed in targets:
        return printed
    found = next((t for t in targets if without_password(t) == printed), None)
    if found is None and _FINGERPRINTS.search(printed) is None:
        found = next((t for t in targets if _FINGERPRINTS.sub("", without_password(t)) == printed), None)
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


def _without_userinfo(text: str) -> str:
    m = _AUTHORITY.match(text)
    if m is None:
        return text
    # The last "@": a password written with an unescaped "@" is hidden whole (urllib does the same).
    userinfo, at, host = m["authority"].rpartition("@")
    if not at:
        return text
    user, colon, password = userinfo.partition(":")
    shown = f"{user}:{hidden(password)}" if colon else hidden(userinfo)
    return f"{m['scheme']}{shown}@{host}{text[m.end() :]}"


def _delimiters(level: int) -> tuple[str, str]:
    """The parameter separators and "=" of a query percent-encoded ``level`` times, as regular
    expressions: ``[&;]`` and ``=`` as written, then ``%26``/``%3B`` and ``%3D``, then ``%2526``..."""
    if level == 0:
        return "[&;]", "="
    escape = "%" + "25" * (level - 1)
    return f"{escape}(?:26|3[Bb])", f"{escape}3[Dd]"


def _decoded(text: str) -> str:
    """``text`` percent-decoded until nothing changes (a value encoded twice, or more)."""
    for _ in range(_MAX_NESTING + 1):
        decoded = unquote_plus(text)
        if decoded == text:
            break
        text = decoded
    return text


def _without_query_secrets(text: str) -> str:
    before, mark, rest = text.partition("?")
    if not mark:
        return text
    query, hash_, fragment = rest.partition("#")
    return f"{before}?{_parameters(query, 0, 0)}{hash_}{fragment}"


def _parameters(query: str, level: int, nesting: int) -> str:
    """A query (its mark and separators encoded ``level`` times) with its secret values hidden,
    those of a URL nested in a value too."""
    separator, equals = _delimiters(level)

    def shown(parameter: str) -> str:
        m = re.match(f"(?P<name>.*?)(?P<equals>{equals})(?P<value>.*)", parameter, re.S)
        if m is None or not m["value"]:
            return parameter
        name = re.sub(r"[-_]", "", _decoded(m["name"])).lower()
        if name in SECRET_PARAMETERS:
            return f"{m['name']}{m['equals']}{hidden(m['value'])}"
        value = _nested(m["value"], level, nesting + 1)
        # A secret nested deeper, or written in a way not followed here (an encoded userinfo):
        # the whole value is hidden rather than shown.
        decoded = _decoded(value)
        if nesting == 0 and without_password(decoded) != decoded:
            value = hidden(value)
        return f"{m['name']}{m['equals']}{value}"

    # Split at the separators first: a value holding "key=" is one parameter's value, kept whole.
    return "".join(shown(p) for p in re.split(f"({separator})", query))


def _nested(value: str, level: int, nesting: int) -> str:
    """A query value that is itself a URL or a path with a query (``next=/x?token=1``,
    ``redirect=https%3A%2F%2Fh%2Fcb%3Fkey%3D1``): its userinfo and secret values hidden."""
    if nesting > _MAX_NESTING:
        return value
    if level == 0:
        value = _without_userinfo(value)
    # Its own query begins at a mark as written ("?") or percent-encoded, once or more ("%3F",
    # "%253F"): its separators are encoded alike.
    m = _MARK.search(value)
    if m is None:
        return value
    inner = 0 if m[0] == "?" else 1 + len(m["twice"]) // 2
    return value[: m.end()] + _parameters(value[m.end() :], inner, nesting)
