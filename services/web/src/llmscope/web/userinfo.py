"""A target as the dashboard prints it: the password of a URL's userinfo, and the values of the
query parameters that carry secrets, hidden.

A gateway's URL may carry credentials (``https://bot:s3cret@gateway.example/v1``); the dashboard
is read on shared screens, in screenshots and in printed reports, so every place that prints a
target prints ``https://bot:•••@gateway.example/v1``. As pip's ``redact_auth_from_url`` does, a
userinfo without a colon is hidden whole (``https://•••@host``): a lone name there is most often
a token. Gateways that take their key in the query string (Azure's ``api-key``, Google's ``key``,
a signed URL's ``sig``) are printed ``https://gw.example/v1?key=•••``: the parameter's name is
kept, its value hidden, the rest of the query as written. Exports (CSV, JSON) keep the stored
value: they are what a script reads back.

Links, forms and the address bar carry a target (or a chart key, which holds one) as printed too:
a secret in a URL lands in browser history, access logs and Referer headers. The route that
receives one maps it back to the stored target it stands for with :func:`stored_target` (or
:func:`stored_chart_key`), among the targets it knows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote_plus

from llmscope.proto.charts import chart_key, parse_chart_key

HIDDEN: Final = "•••"
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
_PARAMETER: Final = re.compile(r"(?P<name>[^&;=]*)=(?P<value>[^&;]*)")


def without_password(target: object) -> str:
    """``target`` (a URL or any name) with its userinfo's password, or a lone user, and the values
    of its secret query parameters (``SECRET_PARAMETERS``) hidden."""
    text = "" if target is None else str(target)
    return _without_query_secrets(_without_userinfo(text))


def stored_target(printed: str, stored: Iterable[str]) -> str | None:
    """The stored target that ``printed`` (a target as the pages print it, or a stored one, as an
    old bookmark holds) stands for; None if it stands for none of ``stored``. Two stored targets
    printed alike (the same URL, different passwords): the first."""
    targets = list(stored)
    if printed in targets:
        return printed
    return next((t for t in targets if without_password(t) == printed), None)


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
    user, colon, _password = userinfo.partition(":")
    shown = f"{user}:{HIDDEN}" if colon else HIDDEN
    return f"{m['scheme']}{shown}@{host}{text[m.end() :]}"


def _without_query_secrets(text: str) -> str:
    before, mark, rest = text.partition("?")
    if not mark:
        return text
    query, hash_, fragment = rest.partition("#")

    def shown(parameter: str) -> str:
        m = _PARAMETER.fullmatch(parameter)
        if m is None or not m["value"]:
            return parameter
        name = re.sub(r"[-_]", "", unquote_plus(m["name"])).lower()
        return f"{m['name']}={HIDDEN}" if name in SECRET_PARAMETERS else parameter

    # Split at "&" and ";" first: a value holding "key=" is one parameter's value, kept whole.
    query = "".join(shown(p) for p in re.split(r"([&;])", query))
    return f"{before}?{query}{hash_}{fragment}"
