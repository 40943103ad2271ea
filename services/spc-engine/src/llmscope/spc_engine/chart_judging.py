"""Phase II: a chart judges each point by its one-step residual with the detectors (CUSUM, TAIL,
SPIKE, EWMA and the Nelson tests) and hands what fired to its episodes."""

from __future__ import annotations

import math

import msgspec

from llmscope.proto.violation import Direction
from llmscope.spc_engine import transforms
from llmscope.spc_engine.chart_episodes import ChartEpisodes, _direction_of, _episode_order, _rule_of
from llmscope.spc_engine.chart_state import _NO_FIRES, Baseline, EpisodeState, PointRef, Signal, _Fire
from llmscope.spc_engine.charts.cusum import CusumChart, CusumSide
from llmscope.spc_engine.charts.ewma import EwmaChart
from llmscope.spc_engine.charts.individuals import IndividualsChart

SIDED_TESTS = frozenset({1, 2, 5, 6})
"""Nelson tests with a side (the others, trends and runs within or beyond 1 sigma, have none)."""
LEVEL_POINTS = 50
"""Newest points whose mean is the level a sustained signal is judged by against ``min_change``."""


_log = math.log
_isfinite = math.isfinite
_INF = math.inf


class ChartJudging(ChartEpisodes):
    """Phase II of a chart: the detectors that judge each point once a baseline is armed."""

    def _build(self) -> None:
        st = self.state
        self._ind: IndividualsChart | None = None
        self._ewma: EwmaChart | None = None
        self._cusum: CusumChart | None = None
        if st.baseline is None:
            return
        cfg = self.config
        assert st.individuals is not None
        assert st.ewma is not None
        assert st.cusum is not None
        # The Nelson tests read residuals, which are standardised already.
        self._ind = IndividualsChart(0.0, 1.0, cfg.rules, st.individuals)
        self._ewma = EwmaChart(cfg.ewma.lam, cfg.ewma.L, st.ewma)
        self._cusum = CusumChart(cfg.cusum.k, cfg.cusum.h, cfg.cusum.cap, st.cusum)
        self._spike = self.spike_limit
        self._tail_open = self.tail_threshold
        self._tail_keep = self.tail_clear
        # Per-point constants, so the hot path formats and sums nothing it did before.
        self._tail_count = sum(st.tail_window)
        self._page_worse = f"PAGE:{cfg.worse}"
        self._hot()

    def _hot(self) -> None:
        """Constants of the per-point path that follow from the configuration alone."""
        cfg = self.config
        self._hot_config = cfg
        worse: Direction = cfg.worse
        self._worse = worse
        self._better: Direction = "down" if worse == "up" else "up"
        self._sign = 1.0 if worse == "up" else -1.0
        self._ewma_on = cfg.ewma.enabled
        self._nelson = self._ind.nelson if self._ind is not None and cfg.individuals else None
        self._cusum_on = cfg.cusum.enabled
        tail = cfg.tail
        self._tail_on = tail.enabled
        self._tail_k = tail.k
        self._tail_n = tail.window
        self._spike_on = cfg.spike.enabled
        self._clip = cfg.clip
        self._floors = bool(cfg.min_change or cfg.min_spike_change)

    def _level(self, n: int) -> float:
        """The process's level now, in metric units: the (log-scale) mean of the last ``n`` points.

        Measured, not modelled: converting a residual shift back to a level divides by
        ``1 - sum(phi)``, which under strong autocorrelation turned a 0.9 s level into "3.4 s"."""
        t = self.config.transform
        points = self.state.recent[-max(1, n) :]
        # transforms.forward, inlined: a CUSUM above its h asks for this at every point.
        if t == "log":
            ys = [_log(v) for p in points if (v := p.value) > 0.0 and v != _INF]
        else:
            ys = [v for p in points if _isfinite(v := p.value)]
        return transforms.inverse(t, sum(ys) / len(ys)) if ys else math.nan

    def _judge(self, y: float, ref: PointRef, baseline: Baseline) -> list[Signal]:
        cfg = self.config
        st = self.state
        ewma = self._ewma
        assert ewma is not None
        assert self._cusum is not None
        if self._hot_config is not cfg:
            self._hot()
        b = baseline
        worse = self._worse
        better = self._better
        sign = self._sign
        center = b.center
        pred = center
        hist = st.hist
        ar = b.ar
        if ar:
            i = -1
            for phi in ar:
                pred += phi * (hist[i] - center)
                i -= 1
        r = (y - pred) / b.sigma_e
        clip = self._clip
        w = clip if r > clip else (-clip if r < -clip else r)
        if ar:
            hist.append(pred + w * b.sigma_e)
            del hist[0]
        u = (w - b.w_mean) / b.w_sd
        z = (y - b.center) / b.sigma if b.sigma else 0.0
        d = sign * u  # worse-positive

        out: list[Signal] = []
        # The critical detectors, one episode per direction (the dicts are made when one fires).
        paging_worse: dict[str, _Fire] = _NO_FIRES
        paging_better: dict[str, _Fire] = _NO_FIRES
        side_worse = side_better = None
        if self._cusum_on:
            # CusumChart.step, inlined (the same arithmetic in the same order).
            cusum = self._cusum
            cs = cusum.state
            upper, lower, run_up, run_down = cs.upper, cs.lower, cs.run_up, cs.run_down
            capped = cusum.capped
            up_fired = down_fired = False
            for i, k, h, limit in cusum.steps:
                up = upper[i] + d - k
                down = lower[i] - d - k
                if up > 0.0:
                    run_up[i] += 1
                else:
                    up = 0.0
                    run_up[i] = 0
                if down > 0.0:
                    run_down[i] += 1
                else:
                    down = 0.0
                    run_down[i] = 0
                if capped:
                    if limit < up:
                        up = limit
                    if limit < down:
                        down = limit
                upper[i] = up
                lower[i] = down
                if up > h:
                    up_fired = True
                if down > h:
                    down_fired = True
            # The sides are built only when they signal: nothing reads them otherwise.
            if up_fired:
                side_worse = self._cusum.side("up")
                paging_worse = {"CUSUM": self._cusum_fire(worse, side_worse)}
            if down_fired:
                side_better = self._cusum.side("down")
                paging_better = {"CUSUM": self._cusum_fire(better, side_better)}
        if self._tail_on:
            window = st.tail_window
            hit = sign * r > self._tail_k
            window.append(hit)
            count = self._tail_count + hit  # kept in step with the window, not summed per point
            tail_n = self._tail_n
            if len(window) > tail_n:
                count -= window.pop(0)
            self._tail_count = count
            if len(window) >= tail_n:
                need = self._tail_keep if self._page_worse in st.episodes else self._tail_open
                if count >= need:
                    fire = self._describe("TAIL", worse)
                    if paging_worse is _NO_FIRES:
                        paging_worse = {}
                    paging_worse["TAIL"] = msgspec.structs.replace(
                        fire,
                        name=f"{count} of the last {cfg.tail.window} answers unusually slow"
                        f" (the baseline has {100 * b.tail_rate:.2g} %)",
                        n_points=cfg.tail.window,
                    )
        if self._spike_on and sign * r > self._spike:
            if paging_worse is _NO_FIRES:
                paging_worse = {}
            paging_worse["SPIKE"] = msgspec.structs.replace(self._describe("SPIKE", worse), level=ref.value)
        episodes = st.episodes
        if paging_worse and self._floors and self._page_worse not in episodes:
            paging_worse = self._large_enough(paging_worse, b)
        if paging_worse or episodes:
            out += self._family(worse, paging_worse, side_worse, d, ref, z, b)
        if paging_better or episodes:
            out += self._family(better, paging_better, side_better, -d, ref, z, b)

        # The other rules: one episode per rule and direction (the dict is made when one fires).
        fired: dict[str, _Fire] = _NO_FIRES
        nelson = self._nelson
        if nelson is not None:
            # IndividualsChart.update on residuals (centre 0, sigma 1: z is r), without the call.
            st_ind = st.individuals
            assert st_ind is not None
            st_ind.n += 1
            for n in nelson.update(r, r):
                direction: Direction = ("up" if r > 0 else "down") if n in SIDED_TESTS else ""
                key = f"R{n}:{direction}" if direction else f"R{n}"
                if fired is _NO_FIRES:
                    fired = {}
                fired[key] = msgspec.structs.replace(
                    self._describe(f"R{n}", direction), n_points=cfg.rules.window(n)
                )
        if self._ewma_on:
            # EwmaChart.update and _ewma_fired, inlined (the same arithmetic in the same order).
            es = ewma.state
            value = es.value = ewma.keep * es.value + ewma.lam * u
            es.n += 1
            bound = ewma.bound
            if abs(value) > bound:
                ewma_fired = True
            elif st.episodes:
                # Hysteresis: an EWMA hovering at its limit during a shift is one episode.
                ewma_fired = f"EWMA:{'up' if value > 0 else 'down'}" in st.episodes and abs(value) > bound / 2
            else:
                ewma_fired = False
            if ewma_fired:
                # u is not oriented: a positive EWMA is the metric going up, whichever way is worse.
                direction = "up" if ewma.state.value > 0 else "down"
                span = min(ewma.state.n, max(1, round(2.0 / cfg.ewma.lam)))
                level = self._level(span)
                if fired is _NO_FIRES:
                    fired = {}
                fired[f"EWMA:{direction}"] = msgspec.structs.replace(
                    self._describe("EWMA", direction), statistic=level, level=level, n_points=span
                )
        if not fired:
            if not st.episodes:
                return out
            rest = [k for k in st.episodes if not k.startswith("PAGE:")]
            if not rest:
                return out
            order = sorted(rest, key=_episode_order)
        else:
            order = sorted(
                set(fired) | {k for k in st.episodes if not k.startswith("PAGE:")}, key=_episode_order
            )
        for key in order:
            found = fired.get(key)
            ep = st.episodes.get(key)
            rule = key.split(":")[0]
            if ep is None:
                if found is not None:
                    ep = st.episodes[key] = EpisodeState(
                        open_index=ref.index, open_point_id=ref.id, rule=rule
                    )
                    out.append(self._signal(rule, found, "open", ref, z, b, ep))
                continue
            if found is not None:
                ep.quiet = 0
                continue
            ep.quiet += 1
            if ep.quiet >= cfg.clear_after:
                del st.episodes[key]
                cleared = self._describe(_rule_of(key, ep), _direction_of(key))
                out.append(self._signal(_rule_of(key, ep), cleared, "cleared", ref, z, b, ep))
                if rule == "EWMA":
                    ewma.reset()
        return out

    def _large_enough(self, fires: dict[str, _Fire], b: Baseline) -> dict[str, _Fire]:
        """The fires whose change is large enough to open the page (``min_change``,
        ``min_spike_change``): the level a message reports (CUSUM: the mean since its run began;
        TAIL: of its window; SPIKE: the answer) at least ``1 + floor`` times worse than the centre."""
        cfg = self.config
        center = transforms.inverse(cfg.transform, b.center)
        out: dict[str, _Fire] = {}
        for rule, fire in fires.items():
            if rule == "SPIKE":
                floor, level = cfg.min_spike_change, fire.level
            else:
                # The level now: the newest points of the signal, at most LEVEL_POINTS, so that a
                # large shift after a long small drift is not diluted by the drift.
                floor, level = cfg.min_change, self._level(min(max(1, fire.n_points), LEVEL_POINTS))
                fire = msgspec.structs.replace(fire, level=level)
            if level is None or not level > 0 or not center > 0:
                continue
            if (level / center if cfg.worse == "up" else center / level) >= 1.0 + floor:
                out[rule] = fire
        return out

    def _cusum_fire(self, direction: Direction, side: CusumSide) -> _Fire:
        stat = side.statistic if direction == "up" else -side.statistic
        run = max(1, side.run)
        return msgspec.structs.replace(
            self._describe("CUSUM", direction), statistic=stat, n_points=run, level=self._level(run)
        )
