"""The report as a PDF made on the server: the report page, rendered here with its stylesheet
inlined and no scripts, printed by a headless Chromium (``--print-to-pdf``), the same print
stylesheet a browser's "Save as PDF" uses.

Why Chromium and not a PDF library: the report's charts are the dashboard's SVG, styled by the
stylesheet; a PDF library (fpdf2, reportlab) would need the report laid out a second time and
the charts drawn again without CSS. Chromium is optional: Debian's ``chromium`` package (what
the browser tests use); without it ``/report.pdf`` answers 503 saying so, and the page's print
button still works in any browser.

The page is printed from a file in a private temporary folder, its scripts removed and a
Content-Security-Policy that allows no script and no fetch at all (the stylesheet is inlined;
links are not followed when printing). ``--no-sandbox`` because containers usually run as
root, where Chromium's sandbox will not start; what it prints is our own escaped template.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

PRINT_TIMEOUT_S = 60.0
# Chromium takes ~200 MB while it prints: one report at a time per process.
_PARALLEL = 1


class PdfUnavailable(RuntimeError):
    """No Chromium to print with, or it failed: the message says what to do."""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def printable(html: str) -> str:
    """The page with the stylesheet inlined and every script removed (printing needs neither
    the network nor JavaScript)."""
    css = (files("llmscope.web") / "static" / "style.css").read_text("utf-8")
    html = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.DOTALL | re.IGNORECASE)
    html = re.sub(r'<link rel="(icon|stylesheet)"[^>]*>', "", html)
    policy = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    head = f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n<style>{css}</style>\n</head>'
    return html.replace("</head>", head, 1)


class PdfPrinter:
    """Prints HTML to PDF with a headless Chromium; ``chromium`` None finds one on the PATH."""

    def __init__(self, chromium: str | None = None, timeout_s: float = PRINT_TIMEOUT_S) -> None:
        self.chromium = chromium or find_chromium()
        self.timeout_s = timeout_s
        self._gate = asyncio.Semaphore(_PARALLEL)

    async def print_html(self, html: str) -> bytes:
        if self.chromium is None:
            raise PdfUnavailable(
                "no Chromium on this server to print the report with (build the API's image with "
                "`--build-arg PDF_REPORTS=true`, or install Debian's `chromium` package), or print "
                "the report page from the browser"
            )
        async with self._gate:
            with tempfile.TemporaryDirectory(prefix="llmscope-report-") as tmp:
                page, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
                page.write_text(printable(html), encoding="utf-8")
                proc = await asyncio.create_subprocess_exec(
                    self.chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-extensions",
                    "--no-first-run",
                    "--no-pdf-header-footer",
                    f"--user-data-dir={tmp}/profile",
                    f"--print-to-pdf={pdf}",
                    page.as_uri(),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                    # The image's home is read-only: Chromium's caches and NSS database go here.
                    env={**os.environ, "HOME": tmp},
                )
                try:
                    _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                    raise PdfUnavailable(
                        f"Chromium did not print the report within {self.timeout_s:g} s"
                    ) from None
                data = pdf.read_bytes() if pdf.exists() else b""
                if proc.returncode != 0 or not data.startswith(b"%PDF"):
                    tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                    raise PdfUnavailable(
                        f"Chromium could not print the report (exit {proc.returncode}): {tail[0]}"
                    )
                return data
