"""A target's URL shortened for a table cell, whole for the reader who hovers, copies or prints it.

A self-hosted gateway's URL (``https://llm-gateway.inference.internal.example.com:8443/v1/openai``)
took nine lines of the Models page's health table. A cell shows its host and a shortened path
(``llm-gateway…:8443/v1/openai``); the parts left out stay in the page in text of no
size (``.url-cut``), so selecting the cell and copying it copies the whole URL, as printing prints
it (``static/style.css``); the ellipsis is drawn by CSS (``.url-more``), so it is never copied; and
the whole URL is the cell's ``title``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, Literal

from markupsafe import Markup

from llmscope.web.userinfo import without_password

SHOWN_WHOLE: Final = 30
"""A target this long or shorter (its scheme aside) is shown whole."""
HOST_KEEP: Final = 30
"""A longer host name shows its first label only (the service: "llm-gateway…:8443"); the
domain after it is most often the same for every target of a site."""
LABEL_KEEP: Final = 24
"""A longer first label (or a long host of one label) shows its start only."""
PATH_KEEP: Final = 16
"""A longer path shows its last segment only ("/…/completions")."""
SEGMENT_KEEP: Final = 16
"""A longer last segment shows its start only."""
V6_KEEP: Final = 15
"""A longer IPv6 literal shows its groups within its first this many characters ("[2001:db8:1234:",
a site's /48), then its port."""
NAME_RUN: Final = 14
"""A host's name longer than this breaks after a hyphen, or inside a longer part with none: as
one run it was wider than the Models page's 8-rem target column ("my-company-llm-router" ran on
under the next column)."""
QUERY_KEEP: Final = 10
"""A longer query (or fragment) shows its "?" only."""

_PARTS: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>[^/?#@]*@)?(?P<host>[^/?#]*)(?P<path>[^?#]*)(?P<rest>.*)",
    re.DOTALL,
)

Piece = tuple[str, Literal["shown", "name", "cut", "more"]]
"""Some of a URL's text: shown (breaking where ``url_breaks`` lets it), shown on one line (a
shortened host's name), or cut (in the page, of no size); or the ellipsis ("more", no text) that
marks a cut."""
MORE: Final[Piece] = ("", "more")


def _host(host: str) -> list[Piece]:
    if host.startswith("[") and "]" in host:  # an IPv6 literal: its colons are not its port's
        name, _, port = host.partition("]")
        if len(name) + 1 > HOST_KEEP:  # "[2001:db8:1234:…]:8443": its first groups, its port
            keep = name.rfind(":", 0, V6_KEEP + 1) + 1 or V6_KEEP
            # Shown, not a name: it may break before a colon in a narrow cell.
            return [(name[:keep], "shown"), MORE, (name[keep:], "cut"), ("]" + port, "name")]
        return [(host, "shown")]
    name, colon, port = host.rpartition(":")
    if not (colon and port.isdigit()):  # no port
        name, port = host, ""
    port = colon + port if port else ""
    if len(name) <= HOST_KEEP:
        return [(host, "shown")]
    first = name.split(".", 1)[0]
    keep = len(first) if len(first) <= LABEL_KEEP else LABEL_KEEP - 4
    return [(name[:keep], "name"), MORE, (name[keep:], "cut"), (port, "name")]


def _path(path: str) -> list[Piece]:
    if len(path) <= PATH_KEEP:
        return [(path, "shown")]
    start = path.rfind("/", 0, len(path) - 1) if path.endswith("/") else path.rfind("/")
    pieces: list[Piece] = []
    if start > 0:  # "/v1/chat/completions": "/", cut "v1/chat", "/completions"
        pieces += [("/", "shown"), MORE, (path[1:start], "cut")]
    last = path[max(start, 0) :]
    if len(last) > SEGMENT_KEEP + 1:
        pieces += [(last[: SEGMENT_KEEP + 1], "shown"), MORE, (last[SEGMENT_KEEP + 1 :], "cut")]
    else:
        pieces.append((last, "shown"))
    return pieces


def url_pieces(url: str) -> list[Piece]:
    """``url`` in pieces whose texts join to it again: its scheme (and any user) cut; its host and
    path, shortened once the whole is longer than ``SHOWN_WHOLE``."""
    m = _PARTS.fullmatch(url)
    assert m is not None  # every part may be empty: any text matches
    scheme, user, host, path, rest = (m.group(g) or "" for g in ("scheme", "user", "host", "path", "rest"))
    pieces: list[Piece] = [(scheme, "cut"), (user, "cut")]
    if len(url) - len(scheme) - len(user) <= SHOWN_WHOLE:
        pieces.append((host + path + rest, "shown"))
    else:
        pieces += _host(host) + _path(path)
        if len(rest) > QUERY_KEEP:
            pieces += [(rest[:1], "shown"), MORE, (rest[1:], "cut")]
        else:
            pieces.append((rest, "shown"))
    merged: list[Piece] = []
    for text, kind in pieces:
        if not text and kind != "more":
            continue
        if kind == "shown" and merged and merged[-1][1] == "shown":
            text = merged.pop()[0] + text  # one run of text, for its line breaks
        merged.append((text, kind))
    return merged


def _chunks(name: str) -> list[str]:
    """``name`` in runs of at most ``NAME_RUN`` characters, split after hyphens: each run stays on
    one line, and a long name breaks between them ("my-company-" "llm-router"). A longer part
    with no hyphen is cut in even runs ("inferencecl" "usterprod01"): whole, it ran on under the
    next column too."""
    runs: list[str] = []
    for part in re.findall(r"[^-]*-|[^-]+$", name):
        if runs and len(runs[-1]) + len(part) <= NAME_RUN:
            runs[-1] += part
            continue
        runs += _even_runs(part)
    return runs


def _even_runs(word: str) -> list[str]:
    """``word`` cut in the fewest runs of at most ``NAME_RUN`` characters, of even lengths."""
    size = -(-len(word) // -(-len(word) // NAME_RUN)) if word else 1  # ceil(len / ceil(len / RUN))
    return [word[i : i + size] for i in range(0, len(word), size)]


_LONG_WORD: Final = re.compile(rf"[A-Za-z0-9]{{{NAME_RUN + 1},}}")


def _long_words_broken(shown: Markup) -> Markup:
    """``shown`` (text marked by ``breaks``) with a ``<wbr>`` in each word longer than
    ``NAME_RUN``: a short URL is shown whole, and "inferenceclusterprod01.ai" has no dot, slash
    or hyphen to break at for 22 characters. Letters and digits are never part of an escape."""
    return Markup(_LONG_WORD.sub(lambda m: "<wbr>".join(_even_runs(m[0])), str(shown)))


def short_url(text: object, breaks: Callable[[str], Markup]) -> Markup:
    """The target, its password hidden (``userinfo``), shortened (``url_pieces``) in a ``span``
    titled with the whole of it; ``breaks`` marks where the shown text may break a line
    (``pages._url_breaks``)."""
    url = without_password(text)
    if not url:
        return Markup("")  # an empty cell stays :empty (a phone's stacked table hides it)
    out: list[str] = []
    for piece, kind in url_pieces(url):
        if kind == "shown":
            out.append(_long_words_broken(breaks(piece)))
        elif kind == "name":
            out.append(
                Markup("<wbr>").join(
                    Markup('<span class="url-name">{}</span>').format(c) for c in _chunks(piece)
                )
            )
        elif kind == "more":
            out.append(Markup('<span class="url-more" aria-hidden="true"></span><wbr>'))
        else:
            out.append(Markup('<span class="url-cut">{}</span>').format(piece))
    return Markup('<span class="url" title="{}">{}</span>').format(url, Markup("").join(out))
