"""The comparison chart's violation marks in a real browser (Debian's chromium): marks of
violations seconds apart, and their counts, take boxes of their own at a laptop's and a phone's
width, the count clear of the phone's unit label above the plot's corner."""

from __future__ import annotations

from importlib.resources import files

from playwright.async_api import async_playwright

from llmscope.web.trend_svg import render_comparison
from tests.web.test_browser import CHROMIUM, SHOTS
from tests.web.test_compare_mark_overlap import burst_comparison

OVERLAPS = """() => {
    const box = e => e.getBoundingClientRect();
    const hit = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5
        && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5;
    const marks = [...document.querySelectorAll('svg.comparison-chart .event-mark path')];
    const counts = [...document.querySelectorAll('svg.comparison-chart text.event-count')];
    const texts = [...document.querySelectorAll('svg.comparison-chart text')];
    const out = [];
    marks.forEach((m, i) => marks.slice(i + 1).forEach(n => {
        if (hit(box(m), box(n))) out.push('marks overlap');
    }));
    for (const c of counts) {
        for (const t of texts)
            if (t !== c && hit(box(c), box(t))) out.push(`count ${c.textContent} on ${t.textContent}`);
        for (const m of marks) if (hit(box(c), box(m))) out.push(`count ${c.textContent} on a mark`);
    }
    return [marks.length, counts.map(c => c.textContent), out];
}"""


async def test_marks_and_counts_have_boxes_of_their_own() -> None:
    css = files("llmscope.web").joinpath("static/style.css").read_text()
    data = burst_comparison(at_start=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for width in (960, 360):
                page = await browser.new_page(viewport={"width": width + 40, "height": 500})
                svg = render_comparison(data, width=width)
                await page.set_content(f"<style>{css}</style><div style='width:{width}px'>{svg}</div>")
                marks, counts, wrong = await page.evaluate(OVERLAPS)
                await page.screenshot(path=str(SHOTS / f"compare-marks-{width}.png"))
                assert (marks, sorted(counts), wrong) == (3, ["3", "5"], []), width
                await page.close()
        finally:
            await browser.close()
