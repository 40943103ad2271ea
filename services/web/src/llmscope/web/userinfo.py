"""A target as the dashboard prints it: the password of a URL's userinfo hidden.

A gateway's URL may carry credentials (``https://bot:s3cret@gateway.example/v1``); the dashboard
is read on shared screens, in screenshots and in printed reports, so every place that prints a
target prints ``https://bot:•••@gateway.example/v1``. As pip's ``redact_auth_from_url`` does, a
userinfo without a colon is hidden whole (``https://•••@host``): a lone name there is most often
a token. Exports (CSV, JSON) keep the stored value: they are what a script reads back.
"""

from __future__ import annotations

import re
from typing import Final

HIDDEN: Final = "•••"
_AUTHORITY: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#]*)")


def without_password(target: object) -> str:
    """``target`` (a URL or any name) with its userinfo's password, or a lone user, hidden."""
    text = "" if target is None else str(target)
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
