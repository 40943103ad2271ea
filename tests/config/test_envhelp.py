"""``--help`` lists each service's variables from its settings module, as the README does."""

from __future__ import annotations

import re

import pytest

from llmscope.config.envhelp import BUS_SETTINGS, environment_help, service_parser, settings_rows
from llmscope.stack.docs import SECTIONS


@pytest.mark.parametrize("module", [BUS_SETTINGS, *(name for _, name in SECTIONS)])
def test_every_settings_table_parses_into_variable_default_meaning(module: str) -> None:
    rows = settings_rows(module)
    assert rows
    for variable, default, meaning in rows:
        assert variable, (variable, default, meaning)
        assert default, (variable, default, meaning)
        assert "`" not in variable + default + meaning  # markup removed
    assert ("LLMSCOPE_LOG_LEVEL", "INFO", "log level") in rows or module == BUS_SETTINGS


def test_help_adds_the_bus_table_instead_of_pointing_to_it() -> None:
    text = environment_help("llmscope.spc_engine.settings", BUS_SETTINGS)
    lines = text.splitlines()
    assert lines[0] == "environment variables:"
    names = [line.split()[0] for line in lines[2:]]
    assert "NATS_URL" in names
    assert "LLMSCOPE_TELEMETRY_MAX_AGE_H" in names
    assert not any("see llmscope.bus.settings" in line for line in lines)
    assert len(names) == len(set(names))
    # Columns line up: every default starts where the header's does.
    column = lines[1].index("default")
    assert all(line[column - 2 : column] == "  " for line in lines[2:])


def test_a_variable_documented_twice_is_listed_once() -> None:
    text = environment_help("llmscope.alerter.settings", BUS_SETTINGS)
    assert sum(line.split()[:1] == ["NATS_URL"] for line in text.splitlines()) == 1


def test_service_parser_prints_the_table_after_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    parser = service_parser("llmscope demo", "A demo.", "llmscope.simulator.settings")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.index("options:") < out.index("environment variables:")
    # Columns are as wide as the longest name, so only the order on the line is fixed.
    assert re.search(r"^  LLMSCOPE_SIM_PORT +11500 ", out, re.M), out
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--nope"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err
