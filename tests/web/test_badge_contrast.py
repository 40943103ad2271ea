"""The severity badges' text is readable on their colour: WCAG AA's 4.5:1 for normal text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import llmscope.web

CSS = re.sub(
    r"/\*.*?\*/", "", (Path(llmscope.web.__file__).parent / "static" / "style.css").read_text(), flags=re.S
)


def _var(name: str) -> str:
    found = re.search(rf"--{name}:\s*(#[0-9a-fA-F]{{6}})", CSS)
    assert found is not None, name
    return found.group(1)


def _colour(value: str) -> str:
    value = value.strip()
    if value.startswith("var(--"):
        return _var(value[6:-1])
    if len(value) == 4:  # #rgb
        return "#" + "".join(c * 2 for c in value[1:])
    return value


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _declarations(selector: str) -> dict[str, str]:
    """Every declaration of rules naming exactly ``selector``, later ones winning."""
    found: dict[str, str] = {}
    for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", CSS):
        if selector in (s.strip() for s in sel.split(",")):
            for decl in body.split(";"):
                if ":" in decl:
                    key, value = decl.split(":", 1)
                    found[key.strip()] = value.strip()
    return found


@pytest.mark.parametrize("severity", ["critical", "warning", "info"])
def test_a_severity_badges_text_has_aa_contrast_on_its_colour(severity: str) -> None:
    base, own = _declarations(".sev"), _declarations(f".sev.{severity}")
    text = _colour(own.get("color", base["color"]))
    background = _colour(own["background"])
    light, dark = sorted((_luminance(text), _luminance(background)), reverse=True)
    assert (light + 0.05) / (dark + 0.05) >= 4.5, (severity, text, background)
