"""How precisely ``series`` and ``series_targets`` keep a series' last event, and how readers find
its exact time (migration 0018)."""

from __future__ import annotations

SEEN_GRAIN = "minute"
"""``last_seen`` of ``series`` and ``series_targets`` is the start of this unit (``date_trunc``)
holding the series' latest event; ``first_seen`` is exact. The persister writes a row only when
its span widens: at one probe every 2 s, once a minute rather than 30 times."""


def target_last_seen(s: str) -> str:
    """The exact time of the latest event of ``s``, a ``series_targets`` row (its alias): among
    the events of the minute its last_seen holds (no later one exists: it would have advanced
    it), by ``telemetry_chart_idx``; its last_seen where telemetry of that minute is gone
    (retention). The stored value was exact before migration 0018: then the range holds no
    later event either."""
    return f"""greatest({s}.last_seen, (
        SELECT max(t.ts) FROM telemetry t
        WHERE t.provider = {s}.provider AND t.model = {s}.model AND t.prompt_id = {s}.prompt_id
          AND t.target = {s}.target
          AND t.ts >= {s}.last_seen AND t.ts < {s}.last_seen + interval '1 {SEEN_GRAIN}'))"""
