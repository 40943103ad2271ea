"""The three severities' violation marks in a real browser (Debian's chromium): each is drawn
differently (shape, fill, stroke), also once the page is grey, and the key under the chart draws
each exactly as the chart does. Warning and info were the same red ring."""

from __future__ import annotations

from importlib.resources import files

from playwright.async_api import async_playwright

from llmscope.web.svg import mark_key, render_chart
from tests.web.test_browser import CHROMIUM, SHOTS
from tests.web.test_severity_marks import one_of_each

STYLES = """() => {
    const look = e => {
        const s = getComputedStyle(e);
        return [e.tagName, s.fill, s.fillOpacity, s.stroke, s.strokeWidth];
    };
    const lone = {};
    for (const sev of ['critical', 'warning', 'info']) {
        const link = `a[href="/violations/v-${sev.slice(0, 4)}"]`;
        const mark = document.querySelector(`svg.control-chart ${link} > .violation`);
        const icon = document.querySelector(`.mark-key [data-severity="${sev}"] .violation`);
        lone[sev] = [mark ? look(mark) : null, icon ? look(icon) : null];
    }
    const group = document.querySelector('svg.control-chart g.violation-mark');
    const more = getComputedStyle(group.querySelector('.violation-more')).stroke;
    const count = getComputedStyle(group.querySelector('.violation-count')).fill;
    return [lone, getComputedStyle(group.querySelector('.violation')).stroke, more, count];
}"""


async def test_the_three_severities_marks_look_different() -> None:
    css = files("llmscope.web").joinpath("static/style.css").read_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for width in (960, 360):
                page = await browser.new_page(viewport={"width": width + 40, "height": 420})
                svg = render_chart(one_of_each(), width=width)
                await page.set_content(
                    f"<style>{css}</style><div style='width:{width}px'>{svg}{mark_key()}</div>"
                )
                lone, group_stroke, more, count = await page.evaluate(STYLES)
                await page.screenshot(path=str(SHOTS / f"severity-marks-{width}.png"))
                await page.add_style_tag(content="html { filter: grayscale(1); }")
                await page.screenshot(path=str(SHOTS / f"severity-marks-{width}-grey.png"))
                on_chart = {sev: tuple(looks[0] or ()) for sev, looks in lone.items()}
                assert all(on_chart.values()), lone
                # Three different looks, and the key's icon drawn as the chart's mark.
                assert len(set(on_chart.values())) == 3, on_chart
                assert all(chart == icon for chart, icon in lone.values()), lone
                # Critical filled; warning and info hollow, warning's stroke the thicker.
                fill_none = {sev: look[1] == "none" for sev, look in on_chart.items()}
                assert fill_none == {"critical": False, "warning": True, "info": True}, on_chart
                widths = {sev: float(look[4].removesuffix("px")) for sev, look in on_chart.items()}
                assert widths["warning"] >= 2 * widths["info"], widths
                # The warning + info probe's mark, ring and count: all in warning's colour.
                assert group_stroke == more == count == on_chart["warning"][3], (group_stroke, more, count)
                await page.close()
        finally:
            await browser.close()
