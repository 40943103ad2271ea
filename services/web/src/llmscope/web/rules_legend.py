"""What each rule of the SPC engine means, in one line a reader without SPC training follows.

Shown under the control chart and on the settings page, and linked from rule codes
(``/dashboard#rule-CUSUM``). Kept in words here, apart from the engine's code, on purpose: it
describes behaviour, it does not configure it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleLine:
    code: str
    name: str
    meaning: str
    severity: str
    """The engine's default severity of the rule."""


RULES: tuple[RuleLine, ...] = (
    RuleLine(
        "AVAILABILITY",
        "Outage",
        "Probes fail several times in a row (timeouts, refused connections, 5xx, empty answers).",
        "critical",
    ),
    RuleLine(
        "ERROR_RATE",
        "Error rate",
        "More failed probes in the recent window than the target's baseline failure rate allows.",
        "warning",
    ),
    RuleLine(
        "CUSUM",
        "Sustained shift",
        "Small deviations that keep pointing the same way add up until the level has clearly moved "
        "(cumulative sum).",
        "critical",
    ),
    RuleLine(
        "SPIKE",
        "Spike",
        "One answer far slower (or faster) than anything the baseline made plausible.",
        "critical",
    ),
    RuleLine(
        "TAIL",
        "Slow tail",
        "Unusually slow answers come more often than in the baseline, though the median did not move.",
        "critical",
    ),
    RuleLine(
        "EWMA",
        "Gradual drift",
        "A smoothed average (exponentially weighted) left its limits: a slow drift, not a jump.",
        "warning",
    ),
    RuleLine("R1", "Nelson test 1", "One point beyond the 3σ control limits.", "warning"),
    RuleLine("R2", "Nelson test 2", "Nine points in a row on one side of the center line.", "info"),
    RuleLine("R3", "Nelson test 3", "Six points in a row steadily rising or falling.", "info"),
    RuleLine("R4", "Nelson test 4", "Fourteen points in a row alternating up and down.", "info"),
    RuleLine("R5", "Nelson test 5", "Two of three points beyond 2σ on the same side.", "info"),
    RuleLine("R6", "Nelson test 6", "Four of five points beyond 1σ on the same side.", "info"),
    RuleLine("R7", "Nelson test 7", "Fifteen points in a row within 1σ: the spread shrank.", "info"),
    RuleLine("R8", "Nelson test 8", "Eight points in a row outside 1σ, on either side.", "info"),
)
BY_CODE: dict[str, RuleLine] = {r.code: r for r in RULES}
