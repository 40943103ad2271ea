"""The offline ``analyze`` command: options contract, JSON lines, table, errors."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmscope.spc_engine import arl
from llmscope.spc_engine.analyze import build_parser, config_from_args, main
from llmscope.spc_engine.config import DEFAULT_EWMA_L, DEFAULT_EWMA_LAMBDA


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
    assert rec["rule_name"] == "sustained shift: slower than the baseline"  # words, not parameters
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


def run_main(argv: list[str]) -> object:
    """``main``'s exit status, argparse's own errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


KNOWN = ["--transform", "none", "--center", "10", "--sigma", "2", "--chart", "individuals", "--rules", "1"]


def test_byte_order_mark_and_spaces_in_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Excel writes a UTF-8 byte-order mark; people write "series, value".
    text = "series, value ,timestamp\na, 10,t0\na, 25,t1\n"
    f = tmp_path / "bom.csv"
    f.write_text(text, encoding="utf-8-sig")
    assert main([str(f), *KNOWN]) == 0
    assert [(r["series"], r["index"], r["rule"]) for r in lines(capsys)] == [
        ("a", 1, "SPIKE"),
        ("a", 1, "R1"),
    ]
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8-sig")), encoding="utf-8")
    )
    assert main(["-", *KNOWN]) == 0
    assert [(r["series"], r["index"], r["rule"]) for r in lines(capsys)] == [
        ("a", 1, "SPIKE"),
        ("a", 1, "R1"),
    ]


@pytest.mark.parametrize("center", ["-3", "0"])
def test_a_centre_the_log_scale_cannot_chart_is_an_option_error(
    tmp_path: Path, center: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write_csv(tmp_path / "a.csv", [("", "", "1")])
    assert run_main([str(f), "--center", center, "--sigma", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: llmscope spc analyze")
    assert "error: --center" in err
    assert run_main([str(f), "--center", center, "--sigma", "0.3", "--transform", "none"]) == 0


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_numeric_options_must_be_finite(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write_csv(tmp_path / "a.csv", [("", "", "1")])
    for option in ("--center", "--sigma", "--ewma-lambda", "--ewma-l", "--cusum-k", "--cusum-h", "--spike-k"):
        argv = [str(f), "--transform", "none", f"{option}={text}"]  # "=": -inf looks like an option
        if option in ("--center", "--sigma"):
            argv += ["--sigma", "1"] if option == "--center" else ["--center", "0"]
        assert run_main(argv) == 2, option
        assert f"argument {option}: not a finite number" in capsys.readouterr().err


def test_spike_is_separate_from_the_nelson_tests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write_csv(tmp_path / "s.csv", [("", "", v) for v in ("10", "17", "10", "21")])  # 3.5 and 5.5 sigma
    base = [str(f), "--transform", "none", "--center", "10", "--sigma", "2", "--chart", "individuals"]
    # As in the service, --rules leaves SPIKE (beyond 5 sigma) on.
    assert main([*base, "--rules", "none"]) == 0
    assert [(r["index"], r["rule"], r["severity"]) for r in lines(capsys)] == [(3, "SPIKE", "critical")]
    assert main([*base, "--rules", "none", "--no-spike"]) == 0
    assert lines(capsys) == []
    assert main([*base, "--rules", "none", "--spike-k", "3"]) == 0
    recs = lines(capsys)
    assert [(r["index"], r["rule"]) for r in recs] == [(1, "SPIKE")]  # one episode: 3 is not quiet
    assert recs[0]["rule_name"] == "one answer slower than anything the baseline made plausible"
    for bad in (["--spike-k", "0"], ["--no-spike", "--spike-k", "4"], ["--defaults", "--no-spike"]):
        assert run_main([str(f), *bad]) == 2, bad
        assert "error:" in capsys.readouterr().err
    assert run_main([str(f), "--chart", "ewma", "--spike-k", "4"]) == 2
    assert "--spike-k" in capsys.readouterr().err


def test_every_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.option_strings or action.dest
    assert run_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Nelson tests only" in text
    assert "--spike-k" in text
    assert "--no-spike" in text


def test_ewma_lambda_alone_keeps_the_default_in_control_arl() -> None:
    parser = build_parser()
    target = arl.ewma_arl(DEFAULT_EWMA_LAMBDA, DEFAULT_EWMA_L)
    cfg = config_from_args(parser.parse_args(["f.csv", "--ewma-lambda", str(DEFAULT_EWMA_LAMBDA)]))
    assert abs(cfg.ewma.L - DEFAULT_EWMA_L) < 0.002  # the default L back
    cfg = config_from_args(parser.parse_args(["f.csv", "--ewma-lambda", "0.3"]))
    assert cfg.ewma.lam == 0.3
    assert arl.ewma_arl(0.3, cfg.ewma.L) == pytest.approx(target, rel=0.01)
    cfg = config_from_args(parser.parse_args(["f.csv", "--ewma-lambda", "0.3", "--ewma-l", "3"]))
    assert (cfg.ewma.lam, cfg.ewma.L) == (0.3, 3.0)


@pytest.mark.parametrize("fmt", ["table", "json"])
@pytest.mark.parametrize("read_first", [False, True])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, fmt: str, read_first: bool) -> None:
    # `llmscope spc analyze big.csv | head -1`: the reader goes before the output is all written,
    # before the first write or in the middle of one (> 64 KiB, a pipe's buffer, still to come).
    f = write_csv(tmp_path / "p.csv", [("", "", "20" if i % 12 == 0 else "10") for i in range(20_000)])
    cmd = [sys.executable, "-m", "llmscope.spc_engine.analyze", str(f), *KNOWN, "--format", fmt]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        if read_first:
            assert proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141
    assert err == ""


def test_skipped_rows_and_empty_files_are_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = ["10", "", "abc", "inf", "nan", "-1", "0", "20"]
    rows = [("a", "", v) for v in values] + [("b", "", "10"), ("b", "", "x")]
    f = write_csv(tmp_path / "k.csv", rows)
    assert main([str(f), "--center", "10", "--sigma", "0.1", "--chart", "individuals", "--rules", "1"]) == 0
    out = capsys.readouterr()
    assert [json.loads(line)["index"] for line in out.out.splitlines()] == [7, 7]  # stdout as before
    assert out.err.splitlines() == [
        "series 'a': skipped 6 of 8 rows: 1 empty, 1 not a number, 2 not finite, 2 not > 0 (log scale)",
        "series 'b': skipped 1 of 2 rows: 1 not a number",
    ]
    empty = tmp_path / "empty.csv"
    empty.write_text("series,value\n")
    assert main([str(empty)]) == 0
    out = capsys.readouterr()
    assert out.out == ""
    assert "no data rows" in out.err
