"""The offline ``analyze`` command: options contract, JSON lines, table, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmscope.spc_engine.analyze import main


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("series,timestamp,value\n" + "".join(f"{s},{t},{v}\n" for s, t, v in rows))
    return path


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_known_parameters_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = ["10", "", "11", "abc", "25", "10"]
    f = write_csv(tmp_path / "a.csv", [("a", f"t{i}", v) for i, v in enumerate(values)])
    rc = main(
        [
            str(f),
            "--chart",
            "individuals",
            "--rules",
            "1",
            "--transform",
            "none",
            "--center",
            "10",
            "--sigma",
            "2",
        ]
    )
    assert rc == 0
    spike, rec = lines(capsys)
    assert spike["rule"] == "SPIKE"
    assert spike["index"] == 4
    # Rows with no value or no number keep their place: 25 is row 4 of series a.
    assert rec["series"] == "a"
    assert rec["index"] == 4
    assert rec["rule"] == "R1"
    assert rec["severity"] == "warning"
    assert rec["value"] == 25.0
    assert rec["timestamp"] == "t4"
    limits = rec["limits"]
    assert isinstance(limits, dict)
    assert limits["ucl"] == 16.0
    assert limits["lcl"] == 4.0
    assert limits["center"] == 10.0
    assert rec["baseline"] == {"id": rec["baseline"]["id"], "n": 0, "n_excluded": 0, "known": True}  # type: ignore[index]


def test_series_are_independent_charts_and_baseline_is_per_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(40)
    rows = []
    for name, level in (("fast", 100.0), ("slow", 5000.0)):
        x = level * np.exp(0.2 * rng.standard_normal(120))
        x[100] = level * math.exp(0.2 * 8)
        rows += [(name, str(i), f"{v:.4f}") for i, v in enumerate(x)]
    f = write_csv(tmp_path / "b.csv", rows)
    assert main([str(f), "--baseline", "100", "--chart", "individuals", "--rules", "none"]) == 0
    recs = lines(capsys)
    assert [(r["series"], r["index"], r["rule"], r["severity"]) for r in recs] == [
        ("fast", 100, "SPIKE", "critical"),
        ("slow", 100, "SPIKE", "critical"),
    ]


def test_defaults_runs_the_service_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write_csv(tmp_path / "c.csv", [("", str(i), "100") for i in range(10)])
    assert main([str(f), "--defaults"]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert "the baseline needs 1000" in out.err
    assert main([str(f), "--defaults", "--baseline", "5"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--center", "5"],
        ["--rules", "9"],
        ["--ewma-lambda", "0"],
        ["--baseline", "1"],
        ["--transform", "sqrt"],
        ["--sigma-estimator", "range"],
    ],
)
def test_bad_options_exit_2(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    f = write_csv(tmp_path / "d.csv", [])
    try:
        code: object = main([str(f), *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2


def test_cusum_and_ewma_options_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(41)
    x = rng.standard_normal(200)
    x[100:] += 2.0
    f = write_csv(tmp_path / "e.csv", [("", "", f"{v:.5f}") for v in x])
    base = [str(f), "--transform", "none", "--center", "0", "--sigma", "1"]
    assert main([*base, "--chart", "cusum", "--cusum-k", "0.5", "--cusum-h", "5"]) == 0
    (rec,) = lines(capsys)
    assert rec["rule"] == "CUSUM"
    assert rec["index"] in range(100, 110)
    assert "k=0.5 h=5" in rec["rule_name"]  # type: ignore[operator]
    assert main([*base, "--chart", "ewma", "--ewma-lambda", "0.2", "--ewma-l", "3", "--format", "table"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["series", "index", "rule", "severity", "value", "center", "lcl", "ucl"]
    assert table[1].split()[1] == "EWMA"  # the empty series name leaves no column


def test_missing_file_and_missing_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.csv")]) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\n")
    assert main([str(bad)]) == 1
    assert "'value' column" in capsys.readouterr().err


def test_runs_as_a_module(tmp_path: Path) -> None:
    f = write_csv(tmp_path / "g.csv", [("", "", "1"), ("", "", "9")])
    cmd = [
        sys.executable,
        "-m",
        "llmscope.spc_engine.analyze",
        str(f),
        "--transform",
        "none",
        "--center",
        "1",
        "--sigma",
        "1",
        "--chart",
        "individuals",
        "--rules",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
    got = [(r["index"], r["rule"]) for r in map(json.loads, out.stdout.splitlines())]
    assert got == [(1, "SPIKE"), (1, "R1")]
