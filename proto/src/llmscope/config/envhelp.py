"""``--help`` text listing a service's environment variables, from its settings module.

Each settings module documents its variables once, in a markdown table in its docstring (the
README's tables are copied from the same place by ``llmscope.stack.docs``); the help prints that
table as plain aligned columns so the two can never disagree.
"""

from __future__ import annotations

import argparse
import importlib
import re

BUS_SETTINGS = "llmscope.bus.settings"

_CODE = re.compile(r"`+([^`]*)`+")


def markdown_table(docstring: str) -> list[str]:
    """The lines of the first markdown table (``| variable | ...``) of a docstring."""
    lines = docstring.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variable"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def settings_rows(module_name: str) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) of each row of a settings module's table, markup removed."""
    module = importlib.import_module(module_name)
    rows = []
    for line in markdown_table(module.__doc__ or "")[2:]:  # skip the header and its rule
        cells = [_CODE.sub(r"\1", cell).strip() for cell in line.strip().strip("|").split("|")]
        cells += [""] * (3 - len(cells))
        rows.append((cells[0], cells[1], " | ".join(cells[2:]).strip(" |")))
    return rows


def environment_help(*module_names: str) -> str:
    """The variables of the given settings modules as aligned columns, for an argparse epilog.

    A row pointing elsewhere ("see llmscope.bus.settings") is left out when that table is listed
    too; a variable two modules both document is listed once.
    """
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for name in module_names:
        for variable, default, meaning in settings_rows(name):
            if default.startswith("see ") or variable in seen:
                continue
            seen.add(variable)
            rows.append((variable, default, meaning))
    width = max(len(v) for v, _, _ in rows)
    default_width = min(max(len(d) for _, d, _ in rows), 24)
    lines = [f"  {'variable':{width}}  {'default':{default_width}}  meaning"]
    lines += [f"  {v:{width}}  {d:{default_width}}  {m}".rstrip() for v, d, m in rows]
    return "environment variables:\n" + "\n".join(lines)


def service_parser(prog: str, description: str, *settings_modules: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` ends with the service's environment variables."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=environment_help(*settings_modules),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
