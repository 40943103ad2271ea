"""The control chart's mark of several rules at one probe in a real browser (Debian's chromium):
its count has a box of its own, clear of the mark and of the other texts, at a laptop's and a
phone's width, and the mark is the worst rule's, once."""

from __future__ import annotations

from importlib.resources import files

from playwright.async_api import async_playwright

from llmscope.web.svg import render_chart
from tests.web.test_browser import CHROMIUM, SHOTS
from tests.web.test_chart_marks import three_rules_at_one_probe

BOXES = """() => {
    const box = e => e.getBoundingClientRect();
    const hit = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5
        && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5;
    const svg = document.querySelector('svg.control-chart');
    const rings = [...svg.querySelectorAll('circle.violation')];
    const counts = [...svg.querySelectorAll('text.violation-count')];
    const texts = [...svg.querySelectorAll('text')];
    const plot = box(svg.querySelector('rect.plot-bg'));
    const out = [];
    for (const c of counts) {
        for (const t of texts) if (t !== c && hit(box(c), box(t))) out.push(`count on ${t.textContent}`);
        for (const r of rings) if (hit(box(c), box(r))) out.push('count on a mark');
        const b = box(c);
        if (b.top < plot.top - 1 || b.right > plot.right + 1) out.push('count outside the plot');
    }
    return [rings.map(r => r.getAttribute('class')), counts.map(c => c.textContent), out];
}"""


async def test_a_probes_mark_and_its_count_have_boxes_of_their_own() -> None:
    css = files("llmscope.web").joinpath("static/style.css").read_text()
    data = three_rules_at_one_probe()
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for width in (960, 360):
                page = await browser.new_page(viewport={"width": width + 40, "height": 400})
                svg = render_chart(data, width=width)
                await page.set_content(f"<style>{css}</style><div style='width:{width}px'>{svg}</div>")
                rings, counts, wrong = await page.evaluate(BOXES)
                await page.screenshot(path=str(SHOTS / f"chart-marks-{width}.png"))
                assert (sorted(rings), counts, wrong) == (
                    ["violation critical", "violation critical"],
                    ["3"],
                    [],
                ), width
                await page.close()
        finally:
            await browser.close()
