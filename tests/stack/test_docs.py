"""The README documents every environment variable the code reads, and its tables are current."""

from __future__ import annotations

import re
from pathlib import Path

from llmscope.stack import docs

ROOT = Path(__file__).resolve().parents[2]
_READ = re.compile(
    r"""(?:\.(?:text|integer|number|flag|choice|url|items|secret|optional_text|raw)\(\s*"""
    r"""|environ(?:\.get)?\(\s*|getenv\(\s*|environ\[\s*)["']([A-Z][A-Z0-9_]+)["']""",
)


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in [*ROOT.glob("proto/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]:
        names |= set(_READ.findall(path.read_text()))
    return names


def test_the_code_reads_variables_through_the_patterns_this_test_knows() -> None:
    found = variables_read_by_the_code()
    assert {"NATS_URL", "DATABASE_URL", "LLMSCOPE_PORT", "LLMSCOPE_SPC_BASELINE_N"} <= found


def test_every_variable_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = sorted(name for name in variables_read_by_the_code() if f"`{name}`" not in readme)
    assert not missing, f"read by the code but not documented in README.md: {missing}"


def test_readme_settings_tables_match_the_services_docstrings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert docs.updated(readme) == readme, "run `make docs`"
