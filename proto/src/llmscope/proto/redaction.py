"""What of a target (an LLM endpoint's URL) is never printed, and what is printed instead: the rule
every service that prints a target shares (the dashboard's :mod:`llmscope.web.userinfo`; the
alerter's texts may follow it).

A gateway's URL may carry credentials (``https://bot:s3cret@gateway.example/v1``). The password
of its userinfo is hidden (``https://bot:•••@gateway.example/v1``); as pip's
``redact_auth_from_url`` does, a userinfo without a colon is hidden whole (``https://•••@host``):
a lone name there is most often a token. Gateways that take their key in the query string
(Azure's ``api-key``, Google's ``key``, a signed URL's ``sig``) are printed
``https://gw.example/v1?key=•••``: the parameter's name is kept, its value hidden, the rest of the
query as written. A value that is itself a URL or a path with a query (a gateway's
``?redirect=https://h/cb?api_key=…`` or ``?next=/x%3Ftoken%3D…``) has its secrets hidden the same
way, its query as written or percent-encoded; one nested in a way not followed here (deeper than
``_MAX_NESTING``, a percent-encoded userinfo) is hidden whole.

Given a key, each hidden value is followed by a fingerprint, the first :data:`FINGERPRINT_HEX`
hex digits of HMAC-SHA256(key, value as written) (``•••3fa2``): two targets told apart only by
their secrets then print apart. The key is the caller's (the API keeps one per installation, in
its database, and never prints it); this module holds none. Without a key :data:`HIDDEN` stands
alone. A value printed already (``•••`` alone or with a fingerprint) is printed as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final
from urllib.parse import unquote_plus

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
# How deep a URL nested in a query value (in a value of its own query...) is followed.
_MAX_NESTING: Final = 4
_MARK: Final = re.compile(r"\?|%(?P<twice>(?:25)*)3[Ff]")


def redacted(target: object, key: bytes | None = None) -> str:
    """``target`` (a URL or any name) with its userinfo's password, or a lone user, and the values
    of its secret query parameters (``SECRET_PARAMETERS``) hidden, those of a URL in a query value
    too (``?next=/x?token=•••``, ``?redirect=https%3A%2F%2Fh%2Fcb%3Fkey%3D•••``); each followed by
    its fingerprint under ``key`` when one is given."""
    text = "" if target is None else str(target)
    return _Redactor(key).target(text)


def hidden(secret: str, key: bytes | None = None) -> str:
    """What is printed for ``secret``: :data:`HIDDEN`, and its fingerprint under ``key`` when one
    is given; a value printed already is returned as it is."""
    if _PRINTED.fullmatch(secret):
        return secret
    if key is None:
        return HIDDEN
    digest = hmac.new(key, secret.encode(errors="surrogatepass"), hashlib.sha256)
    return HIDDEN + digest.hexdigest()[:FINGERPRINT_HEX]


def without_fingerprints(printed: str) -> str:
    """``printed`` with the fingerprints of its hidden values left out (``•••`` alone)."""
    return _FINGERPRINTS.sub("", printed)


def has_fingerprints(printed: str) -> bool:
    """Whether a hidden value of ``printed`` is followed by a fingerprint."""
    return _FINGERPRINTS.search(printed) is not None


class _Redactor:
    """One target's redaction under one key (None: no fingerprints)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None) -> None:
        self._key = key

    def target(self, text: str) -> str:
        return self._without_query_secrets(self._without_userinfo(text))

    def _hidden(self, secret: str) -> str:
        return hidden(secret, self._key)

    def _without_userinfo(self, text: str) -> str:
        m = _AUTHORITY.match(text)
        if m is None:
            return text
        # The last "@": a password written with an unescaped "@" is hidden whole (urllib does the same).
        userinfo, at, host = m["authority"].rpartition("@")
        if not at:
            return text
        user, colon, password = userinfo.partition(":")
        shown = f"{user}:{self._hidden(password)}" if colon else self._hidden(userinfo)
        return f"{m['scheme']}{shown}@{host}{text[m.end() :]}"

    def _without_query_secrets(self, text: str) -> str:
        before, mark, rest = text.partition("?")
        if not mark:
            return text
        query, hash_, fragment = rest.partition("#")
        return f"{before}?{self._parameters(query, 0, 0)}{hash_}{fragment}"

    def _parameters(self, query: str, level: int, nesting: int) -> str:
        """A query (its mark and separators encoded ``level`` times) with its secret values
        hidden, those of a URL nested in a value too."""
        separator, equals = _delimiters(level)

        def shown(parameter: str) -> str:
            m = re.match(f"(?P<name>.*?)(?P<equals>{equals})(?P<value>.*)", parameter, re.S)
            if m is None or not m["value"]:
                return parameter
            name = re.sub(r"[-_]", "", _decoded(m["name"])).lower()
            if name in SECRET_PARAMETERS:
                return f"{m['name']}{m['equals']}{self._hidden(m['value'])}"
            value = self._nested(m["value"], level, nesting + 1)
            # A secret nested deeper, or written in a way not followed here (an encoded
            # userinfo): the whole value is hidden rather than shown.
            decoded = _decoded(value)
            if nesting == 0 and redacted(decoded) != decoded:
                value = self._hidden(value)
            return f"{m['name']}{m['equals']}{value}"

        # Split at the separators first: a value holding "key=" is one parameter's value, kept whole.
        return "".join(shown(p) for p in re.split(f"({separator})", query))

    def _nested(self, value: str, level: int, nesting: int) -> str:
        """A query value that is itself a URL or a path with a query (``next=/x?token=1``,
        ``redirect=https%3A%2F%2Fh%2Fcb%3Fkey%3D1``): its userinfo and secret values hidden."""
        if nesting > _MAX_NESTING:
            return value
        if level == 0:
            value = self._without_userinfo(value)
        # Its own query begins at a mark as written ("?") or percent-encoded, once or more
        # ("%3F", "%253F"): its separators are encoded alike.
        m = _MARK.search(value)
        if m is None:
            return value
        inner = 0 if m[0] == "?" else 1 + len(m["twice"]) // 2
        return value[: m.end()] + self._parameters(value[m.end() :], inner, nesting)


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
