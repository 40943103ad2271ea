"""A signal in words, in the metric's own units: what a page says before any number in sigma.

``latency 1.63 s, +85 % over the 0.88 s baseline: sustained shift, slower than the baseline``.
"""

from __future__ import annotations

from llmscope.spc_engine.chart import Signal

METRIC_WORDS = {"latency_ms": "latency", "ttft_ms": "time to first token", "tokens_per_s": "generation speed"}


def format_value(metric: str, value: float) -> str:
    """``880 ms``, ``1.63 s``, ``42.1 tokens/s``; other metrics as plain numbers."""
    if metric.endswith("_ms"):
        if abs(value) >= 1000:
            return f"{value / 1000:.3g} s"
        return f"{value:.3g} ms"
    if metric == "tokens_per_s":
        return f"{value:.3g} tokens/s"
    return f"{value:.4g}"


def describe_signal(metric: str, sig: Signal) -> str:
    what = METRIC_WORDS.get(metric, metric)
    base = sig.limits.center
    base_text = f"the {format_value(metric, base)} baseline"
    if sig.state == "cleared":
        now = format_value(metric, sig.value)
        return f"{what} back in control: {now} now, against {base_text} ({sig.rule_name})"
    if sig.rule == "TAIL":
        return f"{what}: {sig.rule_name}; {base_text}"
    level = sig.level if sig.level is not None else sig.value
    if base > 0:
        change = (level / base - 1.0) * 100.0
        # "over"/"under" as the alerter words its own lines, so every rule reads alike.
        way = "over" if change >= 0 else "under"
        how = (
            f"{change:+.0f} % {way} {base_text}" if abs(change) < 1000 else f"{level / base:.3g}x {base_text}"
        )
    else:
        how = f"against {base_text}"
    return f"{what} {format_value(metric, level)}, {how}: {sig.rule_name}"
