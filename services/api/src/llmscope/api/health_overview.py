"""The per-model health overview: success, failures by kind, latency percentiles, open violations.

Three queries whatever the number of models (the third lists enabled models not probed in the
window at all, from the models table): one over the window's telemetry (through
``telemetry_ts_idx``), grouped by provider/model/target/streaming, and one over open violations.
Streaming and non-streaming probes are kept apart (their latency distributions differ), and
failed probes never enter the percentiles.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from llmscope.proto.telemetry import PROBES_SQL
from llmscope.proto.violation import SEVERITIES
from llmscope.web.data import HEALTH_MAX_HOURS, HealthOverview, ModelHealth, SilentModel

# rn 1 is each group's latest probe; the failure run is the probes before the latest ok one.
# Probes only: an application's traffic (``traffic:<operation>``) has charts of its own.
TELEMETRY_SQL = """
WITH w AS (
    SELECT provider, model, target, streaming, status, latency_ms, ttft_ms, tokens_per_s, ts,
           row_number() OVER (PARTITION BY provider, model, target, streaming
                              ORDER BY ts DESC, id DESC) AS rn
    FROM telemetry
    WHERE ts >= $1 AND {PROBES_SQL}
),
kinds AS (
    SELECT provider, model, target, streaming, jsonb_object_agg(status, n) AS failures
    FROM (SELECT provider, model, target, streaming, status, count(*) AS n
          FROM w WHERE status <> 'ok'
          GROUP BY provider, model, target, streaming, status) AS k
    GROUP BY provider, model, target, streaming
),
agg AS (
    SELECT provider, model, target, streaming,
           count(*) AS probes,
           count(*) FILTER (WHERE status = 'ok') AS ok,
           coalesce(min(rn) FILTER (WHERE status = 'ok') - 1, count(*)) AS failure_run,
           max(ts) AS last_ts,
           min(status) FILTER (WHERE rn = 1) AS last_status,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY latency_ms)
               FILTER (WHERE status = 'ok') AS latency,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY ttft_ms)
               FILTER (WHERE status = 'ok') AS ttft,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY tokens_per_s)
               FILTER (WHERE status = 'ok') AS tps_p50
    FROM w
    GROUP BY provider, model, target, streaming
)
SELECT agg.*, coalesce(kinds.failures, '{}'::jsonb) AS failures
FROM agg LEFT JOIN kinds USING (provider, model, target, streaming)
ORDER BY provider, model, target, streaming
""".replace("{PROBES_SQL}", PROBES_SQL)

# "Open" as the violations list means it: not cleared, resolved by someone or not (a resolution
# closes the record; the chart still out of control keeps the model's health what it is).
VIOLATIONS_SQL = """
SELECT provider, model, count(*) AS n,
       (array_agg(severity ORDER BY array_position($1::text[], severity) NULLS LAST))[1] AS worst
FROM violations
WHERE cleared_at IS NULL
GROUP BY provider, model
"""


# Enabled models whose last probe is older than the window (the models table keeps last_seen,
# its probes' only); a model seen only in traffic was never probed, so never stopped.
SILENT_SQL = """
SELECT provider, model, target, last_seen, last_status FROM models
WHERE enabled AND source = 'probe' AND last_seen < $1
ORDER BY last_seen DESC, provider, model
"""


def _pct(values: list[float | None] | None, index: int) -> float | None:
    return None if values is None else values[index]


async def model_health(pool: asyncpg.Pool, hours: float, now: datetime | None = None) -> HealthOverview:
    """Health of every provider/model/target/streaming mode probed in the last ``hours``.

    Like the charts, the window has no upper bound: a prober's clock a little ahead of ours
    must not hide its latest probe.
    """
    if not 0 < hours <= HEALTH_MAX_HOURS:
        raise ValueError(f"hours: must be in (0, {HEALTH_MAX_HOURS}], got {hours}")
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=hours)
    async with pool.acquire() as conn:
        rows = await conn.fetch(TELEMETRY_SQL, start)
        open_rows = await conn.fetch(VIOLATIONS_SQL, list(SEVERITIES)) if rows else []
        silent_rows = await conn.fetch(SILENT_SQL, start)
    open_by_model = {(r["provider"], r["model"]): (int(r["n"]), r["worst"]) for r in open_rows}
    models = []
    for r in rows:
        n_open, worst = open_by_model.get((r["provider"], r["model"]), (0, None))
        probes, ok = int(r["probes"]), int(r["ok"])
        models.append(
            ModelHealth(
                provider=r["provider"],
                model=r["model"],
                target=r["target"],
                streaming=r["streaming"],
                probes=probes,
                ok=ok,
                success_ratio=ok / probes,
                failures={str(k): int(v) for k, v in sorted(r["failures"].items())},
                failure_run=int(r["failure_run"]),
                last_ts=r["last_ts"],
                last_status=r["last_status"],
                latency_p50_ms=_pct(r["latency"], 0),
                latency_p95_ms=_pct(r["latency"], 1),
                latency_p99_ms=_pct(r["latency"], 2),
                ttft_p50_ms=_pct(r["ttft"], 0),
                ttft_p95_ms=_pct(r["ttft"], 1),
                ttft_p99_ms=_pct(r["ttft"], 2),
                tokens_per_s_p50=r["tps_p50"],
                open_violations=n_open,
                worst_severity=worst,
            )
        )
    silent = [
        SilentModel(
            provider=r["provider"],
            model=r["model"],
            target=r["target"],
            last_seen=r["last_seen"],
            last_status=r["last_status"],
        )
        for r in silent_rows
    ]
    return HealthOverview(hours=hours, start=start, end=end, models=models, silent=silent)
