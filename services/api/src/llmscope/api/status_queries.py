"""Reads what the status page needs from Postgres and the engine's charts; the verdict is pure.

Five queries whatever the number of models: enabled models, each target's probes, pace and
current failure run in the status window (raw telemetry through ``telemetry_ts_idx``), the
targets that stopped reporting before it (``series_targets``), open violations
(the partial ``violations_open_idx``), and 24 h / 7 d uptime from the per-minute rollups (a week
of raw probes would be 300,000 rows per model at one probe every 2 s). The availability chart
of each live target comes from the engine's KV bucket. :func:`llmscope.web.status.status_report`
turns them into statuses.

Active maintenance windows come from the alerter (its silence list over NATS), waited for at
most ``alerter_wait_s``: without an answer no model is in maintenance, and the page still shows.

A report is kept for ``cache_s``: a public status page and badges embedded in wiki pages are
read by many people at once, and each would otherwise repeat the week-long rollup query.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from llmscope.api.series_seen import SEEN_GRAIN, target_last_seen
from llmscope.api.store import Store
from llmscope.config.logs import get_logger
from llmscope.proto.charts import AVAILABILITY, chart_key
from llmscope.proto.telemetry import PROBES_SQL
from llmscope.web.alerting import AlerterUnavailable, SilenceInfo
from llmscope.web.status import (
    MaintenanceWindow,
    OpenViolations,
    StatusInputs,
    StatusPolicy,
    StatusReport,
    TargetSignals,
    covering_window,
    status_report,
)

log = get_logger("llmscope.api.status")

# Probed models only: a model seen only in traffic has no probes to judge (its row's host is an
# application's, no host of ours for a maintenance window to name).
MODELS_SQL = "SELECT provider, model, last_seen, host FROM models WHERE enabled AND source = 'probe'"

# Per target, both streaming modes and all prompts together, as the engine's availability chart
# counts them; probes only, here and below: a failed request of an application's own traffic
# (``traffic:<operation>``, target its server's address) is no probe of the endpoint, and an
# application going quiet is no target that stopped reporting. rn 1 is the latest probe; the
# current failure run is the probes before the latest successful one, and it started at the
# oldest of them; its kinds (timeout, rate_limited ...) say what they answered.
TARGETS_SQL = f"""
WITH w AS (
    SELECT provider, model, target, host, status, ts,
           row_number() OVER latest AS rn,
           ts - lead(ts) OVER latest AS gap
    FROM telemetry
    WHERE ts >= $1 AND {PROBES_SQL}
    WINDOW latest AS (PARTITION BY provider, model, target ORDER BY ts DESC, id DESC)
),
firsts AS (
    SELECT provider, model, target, min(rn) FILTER (WHERE status = 'ok') AS ok_rn
    FROM w GROUP BY provider, model, target
)
SELECT provider, model, target,
       count(*) AS probes,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       coalesce(min(ok_rn) - 1, count(*)) AS failure_run,
       max(ts) AS last_ts,
       min(ts) FILTER (WHERE rn < coalesce(ok_rn, 9223372036854775807)) AS run_since,
       array_agg(DISTINCT status) FILTER (WHERE rn < coalesce(ok_rn, 9223372036854775807)) AS run_kinds,
       array_agg(DISTINCT host) FILTER (WHERE host <> '') AS hosts,
       extract(epoch FROM max(ts) - min(ts))::float8 / nullif(count(*) - 1, 0) AS spacing_s,
       extract(epoch FROM max(gap))::float8 AS max_gap_s
FROM w JOIN firsts USING (provider, model, target)
GROUP BY provider, model, target
"""

# Targets last probed before the window but within a day (one row per series and target, not the
# raw probes): each is named as stopped reporting on its model rather than dropped in silence at
# the window's edge; a day later it is taken for retired. series_targets holds the minute of the
# last probe, the probes of that minute its time (target_last_seen).
STOPPED_SQL = f"""
SELECT provider, model, target, max(seen) AS last_seen
FROM (SELECT provider, model, target, {target_last_seen("s")} AS seen
      FROM series_targets s
      WHERE last_seen >= $1::timestamptz - interval '1 {SEEN_GRAIN}' AND last_seen < $2 AND target <> ''
        AND {PROBES_SQL}) AS s
WHERE seen >= $1 AND seen < $2
GROUP BY provider, model, target
"""
STOPPED_SHOWN = timedelta(days=1)

# "Open" as the violations list and the health overview mean it: not cleared, the chart still out
# of control. A person's resolution closes the record and stops the reminders, but the status
# says what the data says: a model whose latency is still far above normal is not operational.
VIOLATIONS_SQL = """
SELECT provider, model, target, rule, severity, count(*) AS n, min(ts) AS since
FROM violations
WHERE cleared_at IS NULL
GROUP BY provider, model, target, rule, severity
"""

UPTIME_SQL = f"""
SELECT provider, model,
       sum(n) FILTER (WHERE minute >= $1) AS n_day,
       sum(n_ok) FILTER (WHERE minute >= $1) AS ok_day,
       sum(n) AS n_week,
       sum(n_ok) AS ok_week
FROM telemetry_minute
WHERE minute >= $2 AND {PROBES_SQL}
GROUP BY provider, model
"""


def _ratio(ok: int | None, n: int | None) -> float | None:
    return ok / n if ok is not None and n else None


class StatusReader:
    """Builds the status report (the web's ``StatusData``) over the API's store."""

    def __init__(
        self,
        store: Store,
        policy: StatusPolicy | None = None,
        *,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        silences: Callable[[], Awaitable[list[SilenceInfo]]] | None = None,
        alerter_wait_s: float = 1.0,
    ) -> None:
        self._store = store
        self._silences = silences
        self._alerter_wait_s = alerter_wait_s
        self.policy = policy or StatusPolicy()
        self._cache_s = cache_s
        self._clock = clock
        self._cached: tuple[float, StatusReport] | None = None
        self._lock = asyncio.Lock()

    async def status(self) -> StatusReport:
        """The current report; concurrent callers share one computation."""
        async with self._lock:
            if self._cached is not None and self._clock() - self._cached[0] < self._cache_s:
                return self._cached[1]
            report = await self.compute(datetime.now(UTC))
            self._cached = (self._clock(), report)
            return report

    async def maintenance(self) -> list[MaintenanceWindow]:
        """The active maintenance windows, or none when the alerter does not answer in time."""
        if self._silences is None:
            return []
        try:
            silences = await asyncio.wait_for(self._silences(), self._alerter_wait_s)
        except (AlerterUnavailable, TimeoutError) as exc:
            log.debug("no maintenance windows for the status page", error=str(exc))
            return []
        except Exception as exc:  # the status page must not fail with the alerter
            log.warning("no maintenance windows for the status page", error=repr(exc))
            return []
        return [
            MaintenanceWindow(s.reason, s.providers, s.models, s.hosts, s.rules)
            for s in silences
            if s.active and s.kind == "maintenance"
        ]

    async def compute(self, now: datetime) -> StatusReport:
        """The report at ``now`` from the store, uncached."""
        windows = asyncio.ensure_future(self.maintenance())
        horizon = now - timedelta(seconds=self.policy.window_s)
        try:
            async with self._store.pool.acquire() as conn:
                models = await conn.fetch(MODELS_SQL)
                targets = await conn.fetch(TARGETS_SQL, horizon)
                stopped = await conn.fetch(STOPPED_SQL, now - STOPPED_SHOWN, horizon)
                violations = await conn.fetch(VIOLATIONS_SQL)
                uptime = await conn.fetch(UPTIME_SQL, now - timedelta(days=1), now - timedelta(days=7))
        except BaseException:
            windows.cancel()
            raise
        active = await windows
        # A maintenance window may name hosts: those the model was probed on lately, or last.
        hosts: dict[tuple[str, str], set[str]] = defaultdict(set)
        for r in models:
            if r["host"]:
                hosts[(r["provider"], r["model"])].add(r["host"])
        for r in targets:
            hosts[(r["provider"], r["model"])].update(r["hosts"] or ())
        enabled = {(r["provider"], r["model"]): r["last_seen"] for r in models}
        live = [r for r in targets if (r["provider"], r["model"]) in enabled]
        keys = [chart_key(r["provider"], r["model"], r["target"], "*", AVAILABILITY) for r in live]
        records = await self._store.charts.get_many(keys)
        by_model: dict[tuple[str, str], list[TargetSignals]] = defaultdict(list)
        for r, record in zip(live, records, strict=True):
            by_model[(r["provider"], r["model"])].append(
                TargetSignals(
                    target=r["target"],
                    probes=int(r["probes"]),
                    ok=int(r["ok"]),
                    failure_run=int(r["failure_run"]),
                    last_probe=r["last_ts"],
                    run_since=r["run_since"],
                    availability=record.availability if record is not None else None,
                    spacing_s=r["spacing_s"],
                    max_gap_s=r["max_gap_s"],
                    run_kinds=tuple(r["run_kinds"] or ()),
                )
            )
        for r in stopped:
            key = (r["provider"], r["model"])
            if key in enabled and all(t.target != r["target"] for t in by_model[key]):
                by_model[key].append(
                    TargetSignals(
                        target=r["target"], probes=0, ok=0, failure_run=0, last_probe=r["last_seen"]
                    )
                )
        open_by_model: dict[tuple[str, str], list[OpenViolations]] = defaultdict(list)
        for r in violations:
            open_by_model[(r["provider"], r["model"])].append(
                OpenViolations(r["target"], r["rule"], r["severity"], int(r["n"]), r["since"])
            )
        up = {(r["provider"], r["model"]): r for r in uptime}
        inputs = []
        for key, last_seen in enabled.items():
            u = up.get(key)
            inputs.append(
                StatusInputs(
                    provider=key[0],
                    model=key[1],
                    last_seen=last_seen,
                    targets=sorted(by_model.get(key, []), key=lambda t: t.target),
                    violations=open_by_model.get(key, []),
                    uptime_24h=_ratio(u["ok_day"], u["n_day"]) if u else None,
                    uptime_7d=_ratio(u["ok_week"], u["n_week"]) if u else None,
                    maintenance=covering_window(active, key[0], key[1], hosts.get(key, ())),
                )
            )
        return status_report(inputs, now, self.policy)
