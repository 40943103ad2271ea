"""What every benchmark prints first (bench/machine.py), checked the same way in each smoke test."""

from __future__ import annotations

import re


def assert_machine_printed(text: str, *libraries: str) -> None:
    """``text`` holds the machine block: processor, cores, memory, Python, the load beside the run,
    and each of ``libraries`` with its version."""
    assert re.search(r"^== machine$", text, re.M), text[:2000]
    for label, value in (
        ("cpu", r"\S.*"),
        ("cores", r"\d+ online, \d+ usable by this process"),
        ("ram", r"[\d.]+ GiB"),
        ("python", r"\w+ 3\.\d+\.\d+"),
        ("load average", r"[\d.]+, [\d.]+, [\d.]+ .*"),
    ):
        assert re.search(rf"^{label}\s+{value}$", text, re.M), f"{label} missing in\n{text[:2000]}"
    for library in libraries:
        assert re.search(rf"^libraries\s+.*\b{re.escape(library)} v?\d", text, re.M), library
