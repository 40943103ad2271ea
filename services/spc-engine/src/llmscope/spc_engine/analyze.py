"""``llmscope spc analyze FILE``: run the engine's charts over a CSV and print the signals.

The CSV needs a ``value`` column; ``series`` (each series is an independent chart, started
fresh) and ``timestamp`` are optional. It is read as UTF-8, with or without the byte-order mark
Excel writes; spaces around header names and after commas are ignored. ``-`` reads stdin.
Rows whose value is empty, not a number, not finite, or not chartable (<= 0 on the log scale)
are skipped but keep their row index; stderr gets one note per series with a skipped row,
saying how many and why.

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
  --rules all|none|1,2,5          Nelson tests enabled on the individuals chart, and only those.
  --spike-k K, --no-spike         SPIKE (one point beyond K sigma) is not a Nelson test: the
                                  service runs it beside them as its large-shift detector, so
                                  ``--rules`` leaves it on. ``--spike-k`` moves its limit,
                                  ``--no-spike`` turns it off.
  --ewma-lambda, --ewma-l         EWMA smoothing and limit multiplier. lambda alone gets the L
                                  that keeps the default EWMA's in-control ARL (as ``--cusum-k``
                                  alone keeps the CUSUM's); L alone keeps the default lambda.
  --cusum-k, --cusum-h            one (k, h) pair in sigma units replacing the default three; k
                                  alone gets the h of an in-control ARL of 1,000,000, h alone
                                  gets k = 0.5.
  --transform none|log            chart scale.
  --baseline N                    Phase I points (limits from the first N chartable points).
  --sigma-estimator mr|sd         average moving range / 1.128, or standard deviation.
  --center X --sigma S            known parameters, no baseline: X in the value's units (> 0 on
                                  the log scale), S in chart units (log units with --transform
                                  log).
Exit status: 0 on success (also for a file with a header and no rows, noted on stderr), 1 when
the file cannot be read, 2 on bad options, 141 when the reader of stdout goes away early
(``| head``): quietly, as a program ended by SIGPIPE.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import msgspec

from llmscope.config.stdout import EXIT_BROKEN_PIPE, discard_stdout
from llmscope.spc_engine import transforms
from llmscope.spc_engine.arl import cusum_h_for_arl0, ewma_arl, ewma_limit_for_arl0
from llmscope.spc_engine.chart import MetricChart, Signal
from llmscope.spc_engine.config import (
    DEFAULT_BASELINE_N,
    DEFAULT_EWMA_L,
    DEFAULT_EWMA_LAMBDA,
    DEFAULT_SPIKE_K,
    ChartConfig,
    default_config,
)

CHART_OPTIONS = (
    "chart",
    "min_change",
    "min_spike_change",
    "rules",
    "spike_k",
    "no_spike",
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
CUSUM_ARL0 = 1e6
"""In-control ARL that ``--cusum-k`` alone sets h for (that of each default (k, h) pair)."""
EWMA_MARKOV_STATES = 201
"""Markov-chain states for the EWMA ARLs: the same for the target and the derived L, so
``--ewma-lambda`` at the default lambda gives back the default L."""
SKIP_REASONS = ("empty", "not a number", "not finite", "not > 0 (log scale)")
"""Why a row is skipped, in the order notes list them (only the log scale rejects a finite value)."""


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


def _number(text: str) -> float:
    """A finite float: nan or inf would pass every ``> 0`` check below and chart nothing."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmscope spc analyze",
        description=(
            "Run LLMscope's control charts over a CSV (columns value, optional series, timestamp) "
            "and print each signal. With no chart options, the service's default configuration runs."
        ),
        epilog=(
            "Exit status: 0 on success (a header-only file too, noted on stderr), 1 when the file "
            "cannot be read, 2 on bad options, 141 when the reader of stdout (head, say) stops early."
        ),
    )
    p.add_argument("file", help="CSV file (UTF-8, byte-order mark allowed), or - for stdin")
    p.add_argument(
        "--chart",
        action="append",
        choices=("individuals", "ewma", "cusum"),
        help="chart to run; repeat for several (default: all three). individuals carries the Nelson "
        "tests and SPIKE",
    )
    p.add_argument(
        "--rules",
        type=_rules,
        metavar="all|none|1,2,5",
        help="Nelson tests on the individuals chart (default all). Selects Nelson tests only: SPIKE "
        "is separate and stays on, as in the service (see --spike-k, --no-spike)",
    )
    p.add_argument(
        "--spike-k",
        type=_number,
        metavar="K",
        help=f"SPIKE rule: one point beyond K sigma, critical (default {DEFAULT_SPIKE_K:g})",
    )
    p.add_argument("--no-spike", action="store_true", help="turn the SPIKE rule off (--rules does not)")
    p.add_argument(
        "--ewma-lambda",
        type=_number,
        metavar="LAMBDA",
        help=f"EWMA weight of the newest point, in (0, 1] (default {DEFAULT_EWMA_LAMBDA:g}); without "
        f"--ewma-l, L is set for the in-control ARL of the default (lambda {DEFAULT_EWMA_LAMBDA:g}, "
        f"L {DEFAULT_EWMA_L:g})",
    )
    p.add_argument(
        "--ewma-l",
        type=_number,
        metavar="L",
        help=f"EWMA limits at L sigma of the EWMA statistic (default {DEFAULT_EWMA_L:g})",
    )
    p.add_argument(
        "--cusum-k",
        type=_number,
        metavar="K",
        help="CUSUM reference value, sigma units; one (k, h) pair replaces the default three. "
        f"Without --cusum-h, h is set for an in-control ARL of {CUSUM_ARL0:,.0f}",
    )
    p.add_argument(
        "--cusum-h",
        type=_number,
        metavar="H",
        help="CUSUM decision interval, sigma units (without --cusum-k, k = 0.5)",
    )
    p.add_argument(
        "--transform",
        choices=("none", "log"),
        help="chart scale (default log: values must be > 0)",
    )
    p.add_argument(
        "--baseline",
        type=int,
        metavar="N",
        help=f"Phase I size: limits from each series' first N chartable points "
        f"(default {DEFAULT_BASELINE_N})",
    )
    p.add_argument(
        "--sigma-estimator",
        choices=("mr", "sd"),
        help="Phase I sigma: mr = average moving range / 1.128 (default), sd = standard deviation",
    )
    p.add_argument(
        "--center",
        type=_number,
        metavar="X",
        help="known centre, in the value's units (> 0 on the log scale); with --sigma, no baseline",
    )
    p.add_argument(
        "--sigma",
        type=_number,
        metavar="S",
        help="known sigma, in chart units (log units with --transform log); with --center",
    )
    p.add_argument(
        "--min-change",
        type=float,
        help="a sustained signal opens a page only when its level is (1 + this)x worse than the"
        " centre (the service's default 0.5 with --defaults; 0, the detectors alone, otherwise)",
    )
    p.add_argument(
        "--min-spike-change",
        type=float,
        help="the same for one point (SPIKE): the service's 1.0 with --defaults, else 0",
    )
    p.add_argument(
        "--defaults",
        action="store_true",
        help="exactly the service's default configuration (no other chart option)",
    )
    p.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json: one object per signal, one per line (default); table: aligned columns",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ChartConfig:
    """The chart configuration the options describe (raises UsageError when inconsistent)."""
    given = [name for name in CHART_OPTIONS if getattr(args, name) not in (None, False)]
    if args.defaults and given:
        raise UsageError(f"--defaults cannot be combined with --{given[0].replace('_', '-')}")
    cfg = default_config()
    if args.defaults:
        return cfg
    if (args.center is None) != (args.sigma is None):
        raise UsageError("--center and --sigma go together")
    changes: dict[str, object] = {}
    # Chart options describe the statistics: the practical floor only when asked for.
    changes["min_change"] = args.min_change or 0.0
    changes["min_spike_change"] = args.min_spike_change or 0.0
    transform = cfg.transform if args.transform is None else args.transform
    changes["transform"] = transform
    if args.baseline is not None:
        if args.baseline < 2:
            raise UsageError("--baseline needs at least 2 points")
        changes["baseline_n"] = args.baseline
    if args.sigma_estimator is not None:
        changes["sigma_estimator"] = args.sigma_estimator
    if args.center is not None:
        if transforms.forward(transform, args.center) is None:
            raise UsageError(
                f"--center must be > 0 on the log scale (it is in the value's units), got "
                f"{args.center:g}; --transform none charts it as it is"
            )
        if not args.sigma > 0:
            raise UsageError("--sigma must be > 0")
        changes["center"] = args.center
        changes["sigma"] = args.sigma
    charts = set(args.chart) if args.chart else {"individuals", "ewma", "cusum"}
    changes["individuals"] = "individuals" in charts
    spike = msgspec.structs.replace(cfg.spike, enabled="individuals" in charts and not args.no_spike)
    if args.spike_k is not None:
        if args.no_spike:
            raise UsageError("--spike-k and --no-spike contradict each other")
        if "individuals" not in charts:
            raise UsageError("--spike-k needs the individuals chart (--chart individuals)")
        if not args.spike_k > 0:
            raise UsageError("--spike-k must be > 0")
        spike = msgspec.structs.replace(spike, k=args.spike_k)
    changes["spike"] = spike
    rules = cfg.rules if args.rules is None else cfg.rules.only(args.rules)
    changes["rules"] = rules
    ewma = msgspec.structs.replace(cfg.ewma, enabled="ewma" in charts)
    if args.ewma_l is not None and not args.ewma_l > 0:
        raise UsageError("--ewma-l must be > 0")
    if args.ewma_lambda is not None:
        if not 0 < args.ewma_lambda <= 1:
            raise UsageError("--ewma-lambda must be in (0, 1]")
        limit = args.ewma_l
        if limit is None:
            # Like --cusum-k alone: a new lambda keeps the false-alarm rate the default was set for.
            arl0 = ewma_arl(cfg.ewma.lam, cfg.ewma.L, m=EWMA_MARKOV_STATES)
            limit = ewma_limit_for_arl0(args.ewma_lambda, arl0, m=EWMA_MARKOV_STATES)
        ewma = msgspec.structs.replace(ewma, lam=args.ewma_lambda, L=limit)
    elif args.ewma_l is not None:
        ewma = msgspec.structs.replace(ewma, L=args.ewma_l)
    changes["ewma"] = ewma
    cusum = msgspec.structs.replace(cfg.cusum, enabled="cusum" in charts)
    if args.cusum_k is not None or args.cusum_h is not None:
        k = 0.5 if args.cusum_k is None else args.cusum_k
        if k < 0:
            raise UsageError("--cusum-k must be >= 0")
        h = cusum_h_for_arl0(k, CUSUM_ARL0, sides=1) if args.cusum_h is None else args.cusum_h
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
    skipped: Counter[str] = field(default_factory=Counter)


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


def _skip_note(name: str, s: _Series) -> str:
    reasons = ", ".join(f"{s.skipped[r]} {r}" for r in SKIP_REASONS if s.skipped[r])
    return f"series {name!r}: skipped {s.skipped.total()} of {s.rows} rows: {reasons}"


def analyze(reader: TextIO, config: ChartConfig) -> tuple[list[dict[str, object]], list[str]]:
    """(signal records in input order, notes for stderr) for one CSV."""
    rows = csv.DictReader(reader, skipinitialspace=True)
    if rows.fieldnames is not None:
        # A byte-order mark left by a reader that kept it, and "series, value" headers.
        rows.fieldnames = [name.lstrip("\ufeff").strip() for name in rows.fieldnames]
    if rows.fieldnames is None or "value" not in rows.fieldnames:
        raise ValueError("the CSV needs a header with a 'value' column")
    series: dict[str, _Series] = {}
    records: list[dict[str, object]] = []
    for row in rows:
        name = (row.get("series") or "").strip()
        s = series.get(name)
        if s is None:
            s = series[name] = _Series(MetricChart(config, key=name))
        row_index = s.rows
        s.rows += 1
        text = (row.get("value") or "").strip()
        if not text:
            s.skipped["empty"] += 1
            continue
        try:
            value = float(text)
        except ValueError:
            s.skipped["not a number"] += 1
            continue
        if not math.isfinite(value):
            s.skipped["not finite"] += 1
            continue
        before = s.chart.state.n_points
        s.row_of_point.append(row_index)
        s.timestamps.append((row.get("timestamp") or "").strip())
        signals = s.chart.update(value, point_id=str(row_index))
        if s.chart.state.n_points == before:  # rejected: not chartable
            s.row_of_point.pop()
            s.timestamps.pop()
            s.skipped["not > 0 (log scale)"] += 1
            continue
        records.extend(_record(name, sig, s) for sig in signals if sig.state == "open")
    notes = []
    if not series:
        notes.append("no data rows (a header only): nothing charted")
    for name, s in series.items():
        if s.skipped:
            notes.append(_skip_note(name, s))
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


def _read_stdin(config: ChartConfig) -> tuple[list[dict[str, object]], list[str]]:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:
        return analyze(sys.stdin, config)
    # Decode stdin like a file (UTF-8, optional BOM) whatever the locale says.
    stream = io.TextIOWrapper(buffer, encoding="utf-8-sig", newline="")
    try:
        return analyze(stream, config)
    finally:
        stream.detach()  # leave sys.stdin's buffer open


def _write(records: list[dict[str, object]], fmt: str, out: TextIO) -> None:
    if fmt == "table":
        _table(records, out)
    else:
        # Encode everything before writing anything: an error leaves no half-written output.
        lines = [json.dumps(r, allow_nan=False, default=str) + "\n" for r in records]
        # Line by line: one huge write() that a closed pipe cuts short loses the EPIPE.
        for line in lines:
            out.write(line)
    out.flush()


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
            records, notes = _read_stdin(config)
        else:
            with open(args.file, newline="", encoding="utf-8-sig") as fh:
                records, notes = analyze(fh, config)
    except (OSError, ValueError, csv.Error) as exc:
        print(f"{parser.prog}: {args.file}: {exc}", file=sys.stderr)
        return 1
    for note in notes:
        print(note, file=sys.stderr)
    try:
        _write(records, args.format, sys.stdout)
    except BrokenPipeError:
        # `analyze ... | head`: the reader has what it wanted. End quietly, as a program
        # that SIGPIPE ended would (Python ignores SIGPIPE and raises instead).
        discard_stdout()
        return EXIT_BROKEN_PIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
