"""Keeps the README's per-service settings tables identical to the services' own documentation.

Each service documents its environment variables once, in the docstring of its settings module
(its ``--help`` lists them from there too, see :mod:`llmscope.config.envhelp`).
``python -m llmscope.stack.docs`` copies those tables into README.md between the
``<!-- SERVICE-SETTINGS -->`` markers; ``--check`` fails when the README has drifted.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

from llmscope.config.envhelp import markdown_table

README = Path(__file__).resolve().parents[5] / "README.md"
BEGIN = "<!-- SERVICE-SETTINGS -->"
END = "<!-- /SERVICE-SETTINGS -->"

# (heading, settings module) in the order the README shows them.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("`llmscope api` (API, persister, dashboard)", "llmscope.api.settings"),
    ("`llmscope spc-engine`", "llmscope.spc_engine.settings"),
    ("`llmscope alerter`", "llmscope.alerter.settings"),
    ("`llmscope prober`", "llmscope.prober.settings"),
    ("`llmscope sim`", "llmscope.simulator.settings"),
)

_ROW = re.compile(r"^\|\s*(?P<name>[^|]+?)\s*\|(?P<rest>.*)$")
_VARIABLE = re.compile(r"\b([A-Z][A-Z0-9_]{2,})\b")


def _table(docstring: str) -> list[str]:
    """The first markdown table of a docstring, variable names in backticks."""
    rows = []
    for line in markdown_table(docstring):
        match = _ROW.match(line)
        if match and not line.startswith(("| variable", "| ---")):
            name = _VARIABLE.sub(r"`\1`", match.group("name").replace("`", ""))
            line = f"| {name} |{match.group('rest')}"
        rows.append(line)
    return rows


def render() -> str:
    parts = [BEGIN]
    for heading, module_name in SECTIONS:
        module = importlib.import_module(module_name)
        parts += ["", f"### {heading}", "", *_table(module.__doc__ or "")]
    parts += ["", END]
    return "\n".join(parts)


def updated(readme: str) -> str:
    begin, end = readme.index(BEGIN), readme.index(END) + len(END)
    return readme[:begin] + render() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if README.md is out of date")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = updated(current)
    if args.check:
        if wanted != current:
            print("README.md settings tables are out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
