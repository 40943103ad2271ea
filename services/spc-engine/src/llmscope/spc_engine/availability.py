"""Availability: failed probes are their own signal, never a latency point.

Two rules on the sequence of probe outcomes of one target (all prompts together):
- ``AVAILABILITY`` (critical): a run of consecutive failed probes. While the baseline is
  collected the run is ``fail_run`` (default 3); once the baseline failure rate p is known, it is
  the shortest run of at least ``fail_run`` whose expected in-control wait,
  ``(1 - p^r) / ((1 - p) p^r)`` probes, is at least ``run_arl0`` (default 1e6): 3 up to p = 1 %
  (the floor), 4 at 2 %, 5 at 5 %, so a flaky endpoint does not page every few hours.
- ``ERROR_RATE`` (warning): at least ``c`` failures among the last ``window`` probes, where c is
  the smallest count whose binomial tail at the baseline failure rate is below ``alpha``. The
  baseline rate is estimated from the first ``baseline_n`` probes as (failures + 1) / (n + 2)
  and floored at ``min_rate``, so a perfect baseline does not make one failure an alarm.
Episodes follow the chart rules: open once, clear after ``clear_after`` quiet probes.

A re-baseline (:meth:`AvailabilityChart.rebaseline`, e.g. after a flaky endpoint was fixed)
forgets the estimated rate and collects a new one from the next ``baseline_n`` probes, with who
and why recorded; open episodes clear at once, and the failure run and the window of outcomes
stay (they are facts about the endpoint, not estimates), so an outage still going on signals
again. A probe id among the last ``RECENT_IDS`` is a duplicate and is not counted twice.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import msgspec

from llmscope.spc_engine.rules import Severity


class AvailabilityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    fail_run: int = 3
    """Shortest failure run that signals (the whole run while the baseline is collected)."""
    run_arl0: float = 1e6
    """In-control probes expected between false AVAILABILITY signals, once the rate is known."""
    run_severity: Severity = "critical"
    window: int = 50
    alpha: float = 1e-6
    baseline_n: int = 200
    min_rate: float = 0.01
    rate_severity: Severity = "warning"
    clear_after: int = 5


RECENT_IDS = 64
"""Probe ids remembered for the duplicate check (as many as a metric chart's recent points)."""


class AvailabilityState(msgspec.Struct, kw_only=True):
    n: int = 0
    baseline_start: int = 0
    """``n`` when the current baseline started (0, or the probe count at the last re-baseline)."""
    baseline_failures: int = 0
    threshold: int | None = None
    rate: float | None = None
    run: int = 0
    outcomes: list[bool] = msgspec.field(default_factory=list)
    """Last ``window`` outcomes, True = failed."""
    episodes: dict[str, tuple[int, str]] = msgspec.field(default_factory=dict)
    """rule -> (quiet count, id of the opening probe) of its open episode."""
    recent_ids: list[str] = msgspec.field(default_factory=list)
    """Ids of the last ``RECENT_IDS`` probes, oldest first."""
    baseline_number: int = 0
    """0 for the first baseline, +1 per re-baseline."""
    baseline_by: str | None = None
    baseline_reason: str | None = None
    cold_starts: int = 0
    """Successful probes that paid a model load (``cold_start``): counted, kept off the charts."""


class AvailabilitySignal(msgspec.Struct, frozen=True, kw_only=True):
    rule: Literal["AVAILABILITY", "ERROR_RATE"]
    rule_name: str
    severity: Severity
    state: Literal["open", "cleared"]
    failures: int
    """Failures in the window (ERROR_RATE) or in the current run (AVAILABILITY)."""
    rate: float | None
    episode_point_id: str = ""


def run_wait(p: float, r: int) -> float:
    """Expected probes until ``r`` failures in a row, each failing with probability ``p``."""
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return float(r)
    return (1.0 - p**r) / ((1.0 - p) * p**r)


@functools.lru_cache(maxsize=1024)
def run_needed(p: float, arl0: float, shortest: int, longest: int = 1000) -> int:
    """Shortest run of at least ``shortest`` failures whose in-control wait is ``arl0`` or more."""
    r = shortest
    while r < longest and run_wait(p, r) < arl0:
        r += 1
    return r


def binomial_tail(n: int, p: float, c: int) -> float:
    """P(X >= c) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(max(c, 0), n + 1))


def binomial_threshold(n: int, p: float, alpha: float) -> int:
    """Smallest c with P(X >= c) <= alpha for X ~ Binomial(n, p)."""
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    tail = 0.0
    for c in range(n, -1, -1):
        tail += pmf[c]
        if tail > alpha:
            return c + 1
    return 0


class AvailabilityChart:
    """``update(failed)`` per probe outcome; returns the episode signals of that probe."""

    def __init__(self, config: AvailabilityConfig, state: AvailabilityState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else AvailabilityState()
        self._fail_run: tuple[AvailabilityConfig, float | None, int] | None = None
        self._ids: set[str] | None = None
        """The ids in ``state.recent_ids`` (unique there), for the duplicate check."""
        self._counted: list[bool] | None = None
        self._failures = 0
        """``sum(self._counted)``, kept in step with the window instead of summed per probe."""

    @property
    def fail_run(self) -> int:
        """The failure run that signals now: ``fail_run``, or longer for a flaky baseline."""
        cfg, rate = self.config, self.state.rate
        cached = self._fail_run
        # Asked at every probe; it changes only with the baseline's rate (or the configuration).
        if cached is not None and cached[0] is cfg and cached[1] == rate:
            return cached[2]
        run = cfg.fail_run if rate is None else run_needed(rate, cfg.run_arl0, cfg.fail_run)
        self._fail_run = (cfg, rate, run)
        return run

    @property
    def last_point_id(self) -> str:
        """The latest probe's id ("" when none was remembered)."""
        return self.state.recent_ids[-1] if self.state.recent_ids else ""

    def rebaseline(self, by: str, reason: str) -> list[AvailabilitySignal]:
        """Forget the failure-rate estimate and collect a new one; open episodes clear now."""
        cfg, st = self.config, self.state
        out = [
            AvailabilitySignal(
                rule="AVAILABILITY" if rule == "AVAILABILITY" else "ERROR_RATE",
                rule_name="re-baselined",
                severity=cfg.run_severity if rule == "AVAILABILITY" else cfg.rate_severity,
                state="cleared",
                failures=st.run if rule == "AVAILABILITY" else sum(st.outcomes),
                rate=st.rate,
                episode_point_id=st.episodes[rule][1],
            )
            for rule in ("AVAILABILITY", "ERROR_RATE")
            if rule in st.episodes
        ]
        st.episodes = {}
        st.threshold = st.rate = None
        st.baseline_failures = 0
        st.baseline_start = st.n
        st.baseline_number += 1
        st.baseline_by = by
        st.baseline_reason = reason
        return out

    def update(self, failed: bool, point_id: str = "") -> list[AvailabilitySignal]:
        cfg, st = self.config, self.state
        if point_id:
            # Beyond JetStream's duplicate window the same probe may come back: count it once.
            ids = self._ids
            recent = st.recent_ids
            if ids is None:
                ids = self._ids = set(recent)
            if point_id in ids:
                return []
            recent.append(point_id)
            ids.add(point_id)
            if len(recent) > RECENT_IDS:
                ids.discard(recent.pop(0))
        st.n += 1
        st.run = st.run + 1 if failed else 0
        outcomes = st.outcomes
        if outcomes is not self._counted:  # a new chart or state: counted once
            self._counted = outcomes
            self._failures = sum(outcomes)
        outcomes.append(failed)
        window_failures = self._failures + failed
        if len(outcomes) > cfg.window:
            window_failures -= outcomes.pop(0)
        self._failures = window_failures
        if st.threshold is None:
            st.baseline_failures += int(failed)
            seen = st.n - st.baseline_start
            if seen >= cfg.baseline_n:
                rate = max(cfg.min_rate, (st.baseline_failures + 1) / (seen + 2))
                st.rate = rate
                st.threshold = binomial_threshold(cfg.window, rate, cfg.alpha)
        fired: dict[str, AvailabilitySignal] = {}
        fail_run = self.fail_run
        if st.run >= fail_run:
            name = f"{fail_run} failed probes in a row"
            fired["AVAILABILITY"] = AvailabilitySignal(
                rule="AVAILABILITY",
                rule_name=name,
                severity=cfg.run_severity,
                state="open",
                failures=st.run,
                rate=st.rate,
            )
        if st.threshold is not None and len(st.outcomes) >= cfg.window and window_failures >= st.threshold:
            name = f">= {st.threshold} failures in the last {cfg.window} probes"
            fired["ERROR_RATE"] = AvailabilitySignal(
                rule="ERROR_RATE",
                rule_name=name,
                severity=cfg.rate_severity,
                state="open",
                failures=window_failures,
                rate=st.rate,
            )
        out: list[AvailabilitySignal] = []
        if not fired and not st.episodes:
            return out
        for rule in ("AVAILABILITY", "ERROR_RATE"):
            sig = fired.get(rule)
            if rule not in st.episodes:
                if sig is not None:
                    st.episodes[rule] = (0, point_id)
                    out.append(msgspec.structs.replace(sig, episode_point_id=point_id))
            elif sig is not None:
                st.episodes[rule] = (0, st.episodes[rule][1])
            else:
                quiet, opened_by = st.episodes[rule]
                st.episodes[rule] = (quiet + 1, opened_by)
                if quiet + 1 >= cfg.clear_after:
                    del st.episodes[rule]
                    severity = cfg.run_severity if rule == "AVAILABILITY" else cfg.rate_severity
                    out.append(
                        AvailabilitySignal(
                            rule="AVAILABILITY" if rule == "AVAILABILITY" else "ERROR_RATE",
                            rule_name="back in service",
                            severity=severity,
                            state="cleared",
                            failures=st.run if rule == "AVAILABILITY" else window_failures,
                            rate=st.rate,
                            # The episode is named by its opening probe: without it the clear
                            # names no episode and the outage it ends never clears downstream.
                            episode_point_id=opened_by,
                        )
                    )
        return out
