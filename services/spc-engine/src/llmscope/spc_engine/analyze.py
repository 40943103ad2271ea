"""``llmscope spc analyze FILE``: run the engine's charts over a CSV and print the signals.

The CSV needs a ``value`` column; ``series`` (each series is an independent chart, started
fresh) and ``timestamp`` are optional. Rows whose value is empty, not a number, or not
chartable (<= 0 on the log scale) are skipped but keep their row index. ``-`` reads stdin.

Output, one line per signal (an episode opening: further points of the same run print
nothing, exactly as the service publishes):
``{"series", "index" (0-based row within the series), "rule", "rule_name", "severity", "chart",
"value", "statistic", "deviation_sigma", "timestamp", "points" (row indices that formed the
pattern), "limits" {transform, center, sigma, ucl, lcl, zone bounds}, "baseline" {id, n,
n_excluded, known}}``. Limits are in the value's units (asymmetric on the log scale), sigma in
chart units. ``--format table`` prints the same as a table.

Configuration: with no chart options the service's default configuration runs (``--defaults``
says so explicitly and cannot be combined with other chart options). Each option changes one
part of that configuration:
  --chart individuals|ewma|cusum  charts to run (repeatable; default all three). ``individuals``
                                  carries the Nelson tests and the SPIKE rule.
  --rules all|none|1,2,5          Nelson tests enabled on the individuals chart.
  --ewma-lambda, --ewma-l         EWMA smoothing and limit multiplier.
  --cusum-k, --cusum-h            one (k, h) pair in sigma units replacing the default three; k
                                  alone gets the h of an in-control ARL of 1,000,000, h alone
                                  gets k = 0.5.
  --transform none|log            chart scale.
  --baseline N                    Phase I points (limits from the first N chartable points).
  --sigma-estimator mr|sd         average moving range / 1.128, or standard deviation.
  --center X --sigma S            known parameters, no baseline: X in the value's units, S in
                                  chart units (log units with --transform log).
Exit status: 0 on success, 1 when the file cannot be read, 2 on bad options.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import msgspec

from llmscope.spc_engine.arl import cusum_h_for_arl0
from llmscope.spc_engine.chart import MetricChart, Signal
from llmscope.spc_engine.config import ChartConfig, default_config

CHART_OPTIONS = (
    "chart",
    "rules",
    "ewma_lambda",
    "ewma_l",
    "cusum_k",
    "cusum_h",
    "transform",
    "baseline",
    "sigma_estimator",
    "center",
    "sigma",
)


class UsageError(ValueError):
    """Options that parse but do not make a configuration."""


def _rules(text: str) -> set[int]:
    if text == "all":
        return set(range(1, 9))
    if text == "none":
        return set()
    try:
        tests = {int(part) for part in text.split(",") if part.strip()}
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--rules takes all, none or test numbers like 1,2,5: {text!r}"
        ) from exc
    if not tests or not tests <= set(range(1, 9)):
        raise argparse.ArgumentTypeError(f"Nelson tests are numbered 1 to 8: {text!r}")
    return tests


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmscope spc analyze",
        description="Run LLMscope's control charts over a CSV (columns value, optional series, timestamp).",
    )
    p.add_argument("file", help="CSV file, or - for stdin")
    p.add_argument("--chart", action="append", choices=("individuals", "ewma", "cusum"))
    p.add_argument("--rules", type=_rules, help="all, none, or Nelson test numbers like 1,2,5")
    p.add_argument("--ewma-lambda", type=float)
    p.add_argument("--ewma-l", type=float)
    p.add_argument("--cusum-k", type=float)
    p.add_argument("--cusum-h", type=float)
    p.add_argument("--transform", choices=("none", "log"))
    p.add_argument("--baseline", type=int, metavar="N")
    p.add_argument("--sigma-estimator", choices=("mr", "sd"))
    p.add_argument("--center", type=float, metavar="X")
    p.add_argument("--sigma", type=float, metavar="S")
    p.add_argument("--defaults", action="store_true", help="exactly the service's default configuration")
    p.add_argument("--format", choices=("json", "table"), default="json")
    return p


def config_from_args(args: argparse.Namespace) -> ChartConfig:
    """The chart configuration the options describe (raises UsageError when inconsistent)."""
    given = [name for name in CHART_OPTIONS if getattr(args, name) is not None]
    if args.defaults and given:
        raise UsageError(f"--defaults cannot be combined with --{given[0].replace('_', '-')}")
    cfg = default_config()
    if args.defaults:
        return cfg
    if (args.center is None) != (args.sigma is None):
        raise UsageError("--center and --sigma go together")
    changes: dict[str, object] = {}
    if args.transform is not None:
        changes["transform"] = args.transform
    if args.baseline is not None:
        if args.baseline < 2:
            raise UsageError("--baseline needs at least 2 points")
        changes["baseline_n"] = args.baseline
    if args.sigma_estimator is not None:
        changes["sigma_estimator"] = args.sigma_estimator
    if args.center is not None:
        if not args.sigma > 0:
            raise UsageError("--sigma must be > 0")
        changes["center"] = args.center
        changes["sigma"] = args.sigma
    charts = set(args.chart) if args.chart else {"individuals", "ewma", "cusum"}
    changes["individuals"] = "individuals" in charts
    changes["spike"] = msgspec.structs.replace(cfg.spike, enabled="individuals" in charts)
    rules = cfg.rules if args.rules is None else cfg.rules.only(args.rules)
    changes["rules"] = rules
    ewma = msgspec.structs.replace(cfg.ewma, enabled="ewma" in charts)
    if args.ewma_lambda is not None:
        if not 0 < args.ewma_lambda <= 1:
            raise UsageError("--ewma-lambda must be in (0, 1]")
        ewma = msgspec.structs.replace(ewma, lam=args.ewma_lambda)
    if args.ewma_l is not None:
        if not args.ewma_l > 0:
            raise UsageError("--ewma-l must be > 0")
        ewma = msgspec.structs.replace(ewma, L=args.ewma_l)
    changes["ewma"] = ewma
    cusum = msgspec.structs.replace(cfg.cusum, enabled="cusum" in charts)
    if args.cusum_k is not None or args.cusum_h is not None:
        k = 0.5 if args.cusum_k is None else args.cusum_k
        if k < 0:
            raise UsageError("--cusum-k must be >= 0")
        h = cusum_h_for_arl0(k, 1e6) if args.cusum_h is None else args.cusum_h
        if not h > 0:
            raise UsageError("--cusum-h must be > 0")
        cusum = msgspec.structs.replace(cusum, k=(k,), h=(h,))
    changes["cusum"] = cusum
    try:
        out = msgspec.structs.replace(cfg, **changes)
        # replace() skips __post_init__ validation; round-trip to run it.
        return msgspec.convert(msgspec.to_builtins(out), ChartConfig)
    except (ValueError, msgspec.ValidationError) as exc:
        raise UsageError(str(exc)) from exc


@dataclass
class _Series:
    chart: MetricChart
    rows: int = 0
    row_of_point: list[int] = field(default_factory=list)
    timestamps: list[str] = field(default_factory=list)


def _finite(v: object) -> object:
    """JSON has no infinity: a limit beyond float range prints as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _record(series: str, sig: Signal, s: _Series) -> dict[str, object]:
    limits = {k: _finite(v) for k, v in msgspec.to_builtins(sig.limits).items()}
    return {
        "series": series,
        "index": s.row_of_point[sig.index],
        "rule": sig.rule,
        "rule_name": sig.rule_name,
        "severity": sig.severity,
        "chart": sig.chart,
        "value": sig.value,
        "statistic": sig.statistic,
        "deviation_sigma": sig.deviation_sigma,
        "timestamp": s.timestamps[sig.index] or None,
        "points": [s.row_of_point[p.index] for p in sig.points],
        "limits": limits,
        "baseline": {
            "id": sig.baseline.id,
            "n": sig.baseline.n,
            "n_excluded": sig.baseline.n_excluded,
            "known": sig.baseline.known,
        },
    }


def analyze(reader: TextIO, config: ChartConfig) -> tuple[list[dict[str, object]], list[str]]:
    """(signal records in input order, notes for stderr) for one CSV."""
    rows = csv.DictReader(reader)
    if rows.fieldnames is None or "value" not in rows.fieldnames:
        raise ValueError("the CSV needs a header with a 'value' column")
    series: dict[str, _Series] = {}
    records: list[dict[str, object]] = []
    for row in rows:
        name = row.get("series") or ""
        s = series.get(name)
        if s is None:
            s = series[name] = _Series(MetricChart(config, key=name))
        row_index = s.rows
        s.rows += 1
        try:
            value = float(row.get("value") or "nan")
        except ValueError:
            continue
        before = s.chart.state.n_points
        s.row_of_point.append(row_index)
        s.timestamps.append(row.get("timestamp") or "")
        signals = s.chart.update(value, point_id=str(row_index))
        if s.chart.state.n_points == before:  # rejected: not chartable
            s.row_of_point.pop()
            s.timestamps.pop()
            continue
        records.extend(_record(name, sig, s) for sig in signals if sig.state == "open")
    notes = []
    for name, s in series.items():
        got, need = s.chart.progress
        if not s.chart.armed:
            notes.append(
                f"series {name!r}: {got} chartable points, the baseline needs {need}; nothing judged"
            )
        elif (b := s.chart.state.baseline) is not None and b.n_excluded:
            notes.append(f"series {name!r}: baseline cleaning excluded {b.n_excluded} of {got} points")
    return records, notes


def _num(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _table(records: list[dict[str, object]], out: TextIO) -> None:
    head = ("series", "index", "rule", "severity", "value", "center", "lcl", "ucl")
    lines: list[tuple[str, ...]] = [head]
    for r in records:
        lim = r["limits"]
        assert isinstance(lim, dict)
        lines.append(
            tuple(
                str(v)
                for v in (
                    r["series"],
                    r["index"],
                    r["rule"],
                    r["severity"],
                    _num(r["value"]),
                    _num(lim["center"]),
                    _num(lim["lcl"]),
                    _num(lim["ucl"]),
                )
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.file == "-":
            records, notes = analyze(sys.stdin, config)
        else:
            with open(args.file, newline="", encoding="utf-8") as fh:
                records, notes = analyze(fh, config)
    except (OSError, ValueError, csv.Error) as exc:
        print(f"{parser.prog}: {args.file}: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(note, file=sys.stderr)
    if args.format == "table":
        _table(records, sys.stdout)
    else:
        buf = io.StringIO()
        for r in records:
            buf.write(json.dumps(r, allow_nan=False, default=str) + "\n")
        sys.stdout.write(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
