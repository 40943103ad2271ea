"""The report printed to PDF on the server by a real headless Chromium, read back with poppler
(``pdftotext``, ``pdftoppm``): the chart and the violations table are in it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from llmscope.api.persister import store_telemetry
from llmscope.web.report_pdf import PdfPrinter, PdfUnavailable, printable
from tests.api.conftest import Api
from tests.api.factories import telemetry
from tests.web.test_pages import login
from tests.web.test_trends import seed

TOOLS = {name: shutil.which(name) for name in ("chromium", "pdftotext", "pdftoppm")}
if not all(TOOLS.values()):
    missing = ", ".join(name for name, path in TOOLS.items() if path is None)
    if os.environ.get("CI"):
        raise RuntimeError(f"CI must run the PDF test: `make test` installs {missing} with apt-get")
    pytest.skip(f"not installed: {missing} (make test installs them with apt-get)", allow_module_level=True)

# The comparison chart's first line colour (trend_svg.PALETTE[0], #1f77b4).
LINE_RGB = (0x1F, 0x77, 0xB4)


def ppm_pixels(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGB bytes of a binary PPM (P6, maxval 255), as pdftoppm writes it."""
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos : pos + 1].isspace():
            pos += 1
        end = pos
        while not data[end : end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    assert (fields[0], fields[3]) == (b"P6", b"255"), fields
    return int(fields[1]), int(fields[2]), data[pos + 1 :]


def near(rgb: bytes, i: int, want: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(rgb[i + k] - want[k]) <= tolerance for k in range(3))


async def test_report_pdf_has_the_chart_and_the_violations(api: Api, tmp_path: Path) -> None:
    await seed(api)
    # Three hours of probes before those: a line across the 24 h chart, not a dot.
    start = datetime.now(UTC) - timedelta(hours=3, minutes=15)
    earlier = [
        telemetry(i, id=f"e{i}", ts=start + timedelta(minutes=2 * i), latency_ms=100.0 + 20 * (i % 7 == 0))
        for i in range(90)
    ]
    async with api.store.pool.acquire() as conn:
        await store_telemetry(conn, earlier)
    client = await login(api)
    r = await client.get("/report.pdf?hours=24&series=ollama|llama3.1:8b", timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert 'filename="llmscope-report-ollama-llama3.1-8b-24h.pdf"' in r.headers["content-disposition"]
    assert r.content.startswith(b"%PDF")
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(r.content)
    if os.environ.get("LLMSCOPE_SCREENSHOTS"):  # for the README tour
        await asyncio.to_thread(shutil.copy, pdf, Path(os.environ["LLMSCOPE_SCREENSHOTS"]) / "report.pdf")

    text = await asyncio.to_thread(
        subprocess.run, ["pdftotext", str(pdf), "-"], capture_output=True, check=True, text=True
    )
    words = " ".join(text.stdout.split())
    assert "LLMscope report: ollama/llama3.1:8b" in words
    assert "Critical and warning violations" in words
    assert {"CUSUM", "EWMA"} <= set(words.split())  # the critical and the warning violation seeded
    assert "Log out" not in words  # the print layout: no navigation

    page = ["pdftoppm", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")]
    await asyncio.to_thread(subprocess.run, page, check=True)
    (image,) = await asyncio.to_thread(lambda: list(tmp_path.glob("page*.ppm")))
    width, height, rgb = ppm_pixels(await asyncio.to_thread(image.read_bytes))
    columns = {(i // 3) % width for i in range(0, width * height * 3, 3) if near(rgb, i, LINE_RGB)}
    # The key's swatch is a few columns wide; the line crosses about an eighth of the plot.
    assert len(columns) > width // 12, f"the chart's line: {len(columns)} of {width} columns in its colour"


async def test_without_chromium_the_printer_says_what_to_do() -> None:
    printer = PdfPrinter()
    printer.chromium = None  # as on a server without the package
    with pytest.raises(PdfUnavailable, match="no Chromium on this server"):
        await printer.print_html("<html><head></head></html>")


def test_printable_page_inlines_the_stylesheet_and_drops_scripts() -> None:
    page = printable(
        '<html><head><link rel="stylesheet" href="/static/style.css"><script src="/static/htmx.min.js">'
        "</script></head><body><script>alert(1)</script>hi</body></html>"
    )
    assert "<script" not in page
    assert "/static/style.css" not in page
    assert "<style>" in page
    assert "Content-Security-Policy" in page
    assert "hi" in page


async def test_a_hung_chromium_is_killed(tmp_path: Path) -> None:
    sleeper = tmp_path / "chromium"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    with pytest.raises(PdfUnavailable, match=r"did not print the report within 0\.5 s"):
        await asyncio.wait_for(PdfPrinter(str(sleeper), timeout_s=0.5).print_html("<html></html>"), 20)
