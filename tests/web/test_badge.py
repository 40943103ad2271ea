"""The SVG badge: well-formed XML, the texts, the status colour, widths that fit the text."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from llmscope.web.badge import STATUS_COLOURS, render_badge, status_badge, text_width
from llmscope.web.status import STATUSES, Status

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


@pytest.mark.parametrize("status", STATUSES)
def test_status_badge_texts_and_colour(status: Status) -> None:
    root = parse(status_badge("llama3.1:8b", status))
    texts = [t.text for t in root.iter(f"{NS}text")]
    words = "stopped reporting" if status == "stopped" else status  # a page's words for it
    assert texts == ["llama3.1:8b", "llama3.1:8b", words, words]  # each with its shadow
    fills = [r.get("fill") for r in root.iter(f"{NS}rect")]
    assert fills[1:3] == ["#555", STATUS_COLOURS[status]]  # after the clip path's rect
    assert root.get("aria-label") == f"llama3.1:8b: {words}"
    assert root.findtext(f"{NS}title") == f"llama3.1:8b: {words}"


def test_colours_differ_per_status() -> None:
    assert STATUS_COLOURS["operational"] == "#4c1"
    assert STATUS_COLOURS["outage"] == "#e05d44"
    assert len(set(STATUS_COLOURS.values())) == len(STATUSES)


def test_box_widths_fit_the_text() -> None:
    root = parse(render_badge("org/model:latest", "degraded", "#dfb317"))
    label_rect, message_rect = list(root.iter(f"{NS}rect"))[1:3]
    lw, mw = float(label_rect.get("width", 0)), float(message_rect.get("width", 0))
    assert float(message_rect.get("x", 0)) == lw
    assert float(root.get("width", 0)) == lw + mw
    assert lw == round(text_width("org/model:latest")) + 10
    label_text = next(root.iter(f"{NS}text"))
    assert float(label_text.get("textLength", 0)) == lw - 10
    assert text_width("mmm") > text_width("iii")


def test_names_are_escaped_and_long_ones_cut() -> None:
    root = parse(render_badge('<x>&"y"', "unknown", "#9f9f9f"))
    assert next(root.iter(f"{NS}text")).text == '<x>&"y"'
    assert root.get("aria-label") == '<x>&"y": unknown'
    long = parse(render_badge("m" * 200, "outage", "#e05d44"))
    label = next(long.iter(f"{NS}text")).text or ""
    assert len(label) == 60
    assert label.endswith("…")
