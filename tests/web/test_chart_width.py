"""Charts drawn for the reader's viewport: a phone's chart fits its card with legible text (it
used to be a 960-wide chart held at 640 px, scrolling sideways inside its card)."""

from __future__ import annotations

import re

import pytest

from llmscope.web.pages import CHART_SCALE, CHART_WIDTH, VIEWPORT_COOKIE, chart_width
from tests.api.conftest import Api
from tests.web.test_pages import HX, login, seed


@pytest.mark.parametrize(
    ("viewport", "width"),
    [
        (None, 960),  # no cookie yet (a first page, the server's PDF): a laptop's
        ("", 960),
        ("wide", 960),
        ("-5", 960),
        ("1366", 960),  # wider screens scale the 960 up, as before
        ("1000", 960),
        ("800", 830 // 20 * 20),
        ("390", 380),  # a phone: its card is ~342 px, the chart 380 wide: text at 90 %
        ("320", 360),  # never narrower than 360
    ],
)
def test_chart_width_per_viewport(viewport: str | None, width: int) -> None:
    assert chart_width(viewport) == width


@pytest.mark.parametrize("vw", range(300, 1500, 7))
def test_a_charts_text_is_never_shrunk_below_nine_tenths_where_it_fits(vw: int) -> None:
    width = chart_width(str(vw))
    assert 360 <= width <= CHART_WIDTH
    assert width % 20 == 0
    card = vw - 48
    if vw >= 360 / CHART_SCALE + 48:  # the card holds the narrowest chart at 90 %
        assert card / width >= CHART_SCALE


def view_boxes(html: str) -> list[tuple[str, str]]:
    """The charts' widths: the marks' key draws each mark in a small icon of its own size."""
    found = re.findall(r'<svg class="([\w-]+)" viewBox="0 0 (\d+) \d+"', html)
    return [(cls, w) for cls, w in found if cls != "mark-icon"]


async def test_pages_draw_their_charts_for_the_viewport_cookie(api: Api) -> None:
    await seed(api)
    client = await login(api)
    wide = view_boxes((await client.get("/dashboard")).text)
    assert wide
    assert all(w == "960" for _, w in wide)
    client.cookies.set(VIEWPORT_COOKIE, "390")
    for path, headers in (
        ("/dashboard", {}),
        ("/dashboard?provider=ollama&model=llama3.1:8b&hours=1", {**HX, "HX-Target": "chart-panel"}),
        ("/report?hours=24", {}),
    ):
        r = await client.get(path, headers=headers)
        # The report draws each chart once more for paper (printing from a phone): see below.
        screen = re.sub(r'<div class="print-only">.*?</svg>\s*</div>', "", r.text, flags=re.DOTALL)
        narrow = view_boxes(screen)
        assert narrow, path
        # The answer depends on a cookie: a cache must not hand it to another screen.
        assert "Cookie" in r.headers["vary"], path
        assert all(w == "380" for _, w in narrow), (path, narrow)
    # What keeps the cookie: every page loads it.
    assert '<script src="/static/viewport.js"></script>' in (await client.get("/")).text
    js = await client.get("/static/viewport.js")
    assert js.status_code == 200
    assert f"{VIEWPORT_COOKIE}=" in js.text


async def test_a_phones_report_draws_its_charts_for_paper_too(api: Api) -> None:
    """Printed from a phone, a report printed 380-wide charts: each is drawn a second time at the
    laptop's width, shown only in print (style.css's ``.print-only``)."""
    await seed(api)
    client = await login(api)
    client.cookies.set(VIEWPORT_COOKIE, "390")
    html = (await client.get("/report?hours=24")).text
    screen = re.findall(r'<div class="screen-only">\s*<svg class="([\w-]+)" viewBox="0 0 (\d+) ', html)
    paper = re.findall(r'<div class="print-only">\s*<svg class="([\w-]+)" viewBox="0 0 (\d+) ', html)
    assert screen
    assert {w for _, w in screen} == {"380"}
    assert [c for c, _ in paper] == [c for c, _ in screen]
    assert {w for _, w in paper} == {str(CHART_WIDTH)}
    assert len(view_boxes(html)) == 2 * len(screen)  # no chart outside the pairs
    # A laptop's report draws each chart once: its screen's width is paper's.
    client.cookies.set(VIEWPORT_COOKIE, "1366")
    wide = (await client.get("/report?hours=24")).text
    assert "print-only" not in wide
    assert {w for _, w in view_boxes(wide)} == {str(CHART_WIDTH)}
