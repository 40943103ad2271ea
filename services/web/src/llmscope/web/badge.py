"""Shields-style flat SVG badges ("llama3.1:8b | operational"), built without any font files.

Text widths are estimated from a small table of Verdana 11 px advances; ``textLength`` then
stretches or squeezes the glyphs to exactly that width, so a badge never overflows its box
whatever font the viewer substitutes (shields.io does the same).
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from llmscope.web.status import STOPPED, Status

# shields.io's named colours: brightgreen, yellow, red, lightgrey, blue, orange (stopped
# reporting: no data, as grey, but about a model that was monitored and may be down).
STATUS_COLOURS: dict[Status, str] = {
    "operational": "#4c1",
    "degraded": "#dfb317",
    "outage": "#e05d44",
    "unknown": "#9f9f9f",
    "maintenance": "#007ec6",
    "stopped": "#fe7d37",
}
LABEL_COLOUR = "#555"
MAX_LABEL = 60

_NARROW = set("ijl.:,;'!|")
_SEMI = set("fIt()[]r/-{} ")
_WIDE = set("mwMW@%")


def text_width(text: str) -> float:
    """Approximate width of ``text`` in Verdana 11 px."""
    width = 0.0
    for ch in text:
        if ch in _NARROW:
            width += 3.2
        elif ch in _SEMI:
            width += 4.6
        elif ch in _WIDE:
            width += 10.5
        elif ch.isupper():
            width += 7.6
        else:
            width += 6.8
    return width


def render_badge(label: str, message: str, colour: str) -> str:
    """A 20 px high flat badge: ``label`` on grey, ``message`` on ``colour``."""
    if len(label) > MAX_LABEL:
        label = label[: MAX_LABEL - 1] + "…"
    lw, mw = round(text_width(label)) + 10, round(text_width(message)) + 10
    total = lw + mw
    title = f"{label}: {message}"
    font = 'font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"'

    def text(x: float, value: str, width: float) -> str:
        # A dark copy one pixel lower is the flat style's text shadow.
        return (
            f'<text aria-hidden="true" x="{x:g}" y="15" fill="#010101" fill-opacity=".3" '
            f'textLength="{width:g}">{escape(value)}</text>'
            f'<text x="{x:g}" y="14" textLength="{width:g}">{escape(value)}</text>'
        )

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" '
        f"aria-label={quoteattr(title)}>"
        f"<title>{escape(title)}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="{LABEL_COLOUR}"/>'
        f'<rect x="{lw}" width="{mw}" height="20" fill="{colour}"/>'
        f'<rect width="{total}" height="20" fill="url(#s)"/></g>'
        f'<g fill="#fff" text-anchor="middle" {font} text-rendering="geometricPrecision">'
        f"{text(lw / 2, label, lw - 10)}{text(lw + mw / 2, message, mw - 10)}</g></svg>"
    )


def status_badge(label: str, status: Status, message: str | None = None) -> str:
    """The badge of a status, coloured by status; ``message``: its words where they are not the
    status itself ("stopped reporting", "1 of 5 stopped reporting")."""
    words = message or (STOPPED if status == "stopped" else status)
    return render_badge(label, words, STATUS_COLOURS[status])
