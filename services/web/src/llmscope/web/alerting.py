"""What the alerting pages read and change: incidents, silences, notifications, test sends.

The alerter owns these (channels and their secrets, incident lifecycle, silences, the notification
log); the API reaches it over NATS and implements :class:`AlertingData`. As in :mod:`.data`, the
dataclasses double as the API's JSON models.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

from llmscope.web.data import Violation, failed_probes_text

IncidentState = Literal["open", "acknowledged", "resolved"]
IncidentAction = Literal["acknowledge", "resolve"]
NotificationStatus = Literal["sending", "sent", "failed", "expired"]
TEST_CHANNELS: tuple[str, ...] = (
    "email",
    "slack",
    "webhook",
    "pagerduty",
    "alertmanager",
    "teams",
    "discord",
    "mattermost",
    "tickets",
)
"""What the wizard's test buttons send: the channels by kind, and ``tickets`` (the tracker: a test
ticket is opened and closed)."""


class AlerterUnavailable(RuntimeError):
    """No alerter answered (none running, or it did not answer in time)."""


class AlerterRefused(ValueError):
    """The alerter refused a request as invalid; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class TestSendResult:
    """A channel's answer to a test message (``status``: sent, failed, not_configured, ...)."""

    __test__ = False  # not a pytest class

    ok: bool
    channel: str
    kind: str | None
    status: str
    detail: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident as of its latest stored revision."""

    id: str
    revision: int
    state: IncidentState
    title: str
    severity: str
    provider: str
    host: str
    models: list[str]
    cascade: bool
    violation_count: int
    opened_at: datetime
    last_violation_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    acknowledged_note: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolved_note: str | None = None
    llm_status: str = "disabled"
    merged_into: str | None = None
    """the incident this one was merged into (a host's cascade)"""
    change: str = "opened"
    """what its latest revision changed: opened, updated (its violations), acknowledged, resolved,
    analyzed"""
    changed_at: datetime | None = None
    """when the alerter published its latest revision"""

    @property
    def changes(self) -> IncidentChanges:
        """What changed in it since it opened, as the person on call counts: violations joining
        (a merge brings in the absorbed incident's), its acknowledgement, its resolution."""
        return IncidentChanges.of(self)


@dataclass(frozen=True, slots=True)
class IncidentChanges:
    """An incident's changes of membership and state since it opened, read off its latest
    revision. Not ``revision - 1``: the alerter also publishes a revision for each analysis it
    writes (again after a resolution) and for a resolution note copied from a violation, none of
    which changes who is in it or what state it is in; its severity is its worst violation's, so
    it changes only with its membership. An incident opens with one violation; it is acknowledged
    and resolved at most once."""

    joined: int
    acknowledged: bool
    resolved: bool
    last: str
    """the latest of them, in words ("" when none)"""
    last_at: datetime | None

    @property
    def count(self) -> int:
        return self.joined + self.acknowledged + self.resolved

    @property
    def parts(self) -> list[str]:
        joined = f"{self.joined} violation{'' if self.joined == 1 else 's'} joined" if self.joined else ""
        return [p for p in (joined, "acknowledged" * self.acknowledged, "resolved" * self.resolved) if p]

    @classmethod
    def of(cls, i: Incident) -> IncidentChanges:
        joined = max(0, i.violation_count - 1)
        resolved = i.state == "resolved"
        acknowledged = i.acknowledged_at is not None
        seen: list[tuple[int, datetime | None, str]] = []
        if joined:
            seen.append((0, i.last_violation_at, "a violation joined"))
        if acknowledged:
            seen.append((1, i.acknowledged_at, "acknowledged"))
        if resolved:
            seen.append((2, i.resolved_at, f"merged into {i.merged_into}" if i.merged_into else "resolved"))
        # The latest by time; one not dated (never from the alerter) by its place in the lifecycle.
        far = datetime.min.replace(tzinfo=UTC)
        last = max(seen, key=lambda c: (c[1] or far, c[0]), default=(0, None, ""))
        return cls(joined, acknowledged, resolved, last[2], last[1])


_FAILURE_METRICS = frozenset({"availability", "error_rate"})


def _in_units(value: float, metric: str) -> str:
    """``1.63 s``, ``880 ms``, ``42.1 tok/s``, ``12 %``: the alerter's wording of a figure."""
    if metric.endswith("_ms"):
        return f"{value / 1000:.3g} s" if abs(value) >= 1000 else f"{value:.3g} ms"
    if metric == "tokens_per_s":
        return f"{value:.3g} tok/s"
    if metric.endswith("_percent"):
        return f"{value:.0f} %"
    return f"{value:.3g}"


@dataclass(frozen=True, slots=True)
class MetricMoveInfo:
    """One chart's move in an incident's analysis, and its figures in words with units."""

    model: str
    metric: str
    baseline: float
    observed: float
    change_percent: float | None
    deviation_sigma: float
    prompt_id: str = ""
    rule: str = ""
    """The rule of the violation whose figure ``observed`` is, as the move says it (older moves
    do not: ``with_outage_rules`` infers an outage's from the incident's violations).
    AVAILABILITY's count is a run, ERROR_RATE's failures scattered in its window."""
    rule_name: str = ""
    run: bool = False
    """``observed`` is the failed probes since the last success, a run whatever ``rule`` fired
    (the alerter raised the violation's count to it): "N failed probes in a row"."""

    @property
    def outage(self) -> bool:
        """An outage's baseline is a failure rate and its observed value a count of failures."""
        return self.metric in _FAILURE_METRICS

    @property
    def baseline_text(self) -> str:
        if self.outage:
            # The engine writes a rate of 0 while it collects the availability baseline: no estimate.
            if self.baseline <= 0:
                return "not known yet (baseline collecting)"
            return f"{self.baseline * 100:.1f} % of probes failing"
        return _in_units(self.baseline, self.metric)

    @property
    def observed_text(self) -> str:
        if self.outage:
            if self.run:
                return failed_probes_text(self.observed, "AVAILABILITY")
            return failed_probes_text(self.observed, self.rule, self.rule_name)
        return _in_units(self.observed, self.metric)

    @property
    def change_text(self) -> str:
        return "–" if self.change_percent is None or self.outage else f"{self.change_percent:+.0f} %"

    @property
    def sigma_text(self) -> str:
        return "–" if self.outage else f"{self.deviation_sigma:+.2f} σ"


@dataclass(frozen=True, slots=True)
class IncidentAnalysisInfo:
    """The deterministic summary, always; the LLM's writing only when it answered.

    ``deterministic_only`` is true whenever the LLM did not answer (disabled, unreachable, slow,
    garbage): the summary then stands alone.
    """

    summary: str
    deterministic_only: bool
    llm_status: str
    llm_error: str | None = None
    llm_model: str | None = None
    hypothesis: str | None = None
    engineering_email: str | None = None
    customer_notice: str | None = None
    rules: list[str] = field(default_factory=list)
    moves: list[MetricMoveInfo] = field(default_factory=list)


def _outage_rule(move: MetricMoveInfo, violations: list[Violation]) -> MetricMoveInfo:
    """``move`` with the rule of its chart's violation: the one whose count it shows, else (the
    alerter raised it to the failures since the last success) the run's."""
    mine = sorted(
        (
            v
            for v in violations
            if (v.model, v.metric, v.prompt_id) == (move.model, move.metric, move.prompt_id)
        ),
        key=lambda v: v.ts,
    )
    if not mine:
        return move
    rules = {v.rule.upper() for v in mine}
    same = [v for v in mine if round(v.value) == round(move.observed)]
    if not same:
        # No violation's count: the alerter raised it to the failures since the last success.
        move = replace(move, run=True)
    if len(rules) == 1:
        chosen = mine[0]
    elif same:
        chosen = same[0]
    else:
        chosen = (
            next(v for v in mine if v.rule.upper() == "AVAILABILITY") if "AVAILABILITY" in rules else mine[0]
        )
    return replace(move, rule=chosen.rule, rule_name=chosen.rule_name)


def with_outage_rules(
    analysis: IncidentAnalysisInfo | None, violations: list[Violation]
) -> IncidentAnalysisInfo | None:
    """The analysis with each outage move's rule: its own where the alerter wrote one, else
    (a message from before ``MetricMove.rule``) inferred from the incident's violations."""
    if analysis is None or not any(m.outage and not m.rule for m in analysis.moves):
        return analysis
    moves = [_outage_rule(m, violations) if m.outage and not m.rule else m for m in analysis.moves]
    return replace(analysis, moves=moves)


@dataclass(frozen=True, slots=True)
class SimilarIncidentInfo:
    incident_id: str
    title: str
    score: float
    opened_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResembledIncidentInfo:
    """A resolved incident this one closely resembles, and how it was resolved."""

    incident_id: str
    title: str
    score: float
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    resolved_note: str | None = None


@dataclass(frozen=True, slots=True)
class TicketInfo:
    """The incident's ticket in the team's tracker."""

    tracker: str
    key: str
    url: str
    state: str


@dataclass(frozen=True, slots=True)
class IncidentDetail:
    incident: Incident
    analysis: IncidentAnalysisInfo | None
    similar: list[SimilarIncidentInfo]
    episode_ids: list[str]
    violations: list[Violation]
    resembles: ResembledIncidentInfo | None = None
    ticket: TicketInfo | None = None


@dataclass(frozen=True, slots=True)
class IncidentFilter:
    state: IncidentState | None = None
    model: str | None = None
    since: datetime | None = None
    limit: int = 50
    cursor: str | None = None
    severities: tuple[str, ...] = ()
    """Any of these severities (empty: no restriction)."""


@dataclass(frozen=True, slots=True)
class IncidentPage:
    items: list[Incident]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentActionResult:
    """``ok``, ``not_found``, or ``conflict`` (e.g. acknowledging a resolved incident)."""

    status: Literal["ok", "not_found", "conflict"]
    incident: Incident | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class SilenceInput:
    """A silence or maintenance window to create: one-off (``ends_at``), weekly or monthly recurring.

    ``timezone`` is the recurring window's; ``monthly_weekdays`` are like ``"first sun"``.
    """

    reason: str
    author: str
    kind: Literal["silence", "maintenance"] = "silence"
    models: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    weekly_days: list[str] = field(default_factory=list)
    weekly_start: str | None = None
    weekly_end: str | None = None
    timezone: str = "UTC"
    monthly_days: list[int] = field(default_factory=list)
    monthly_weekdays: list[str] = field(default_factory=list)
    monthly_start: str | None = None
    monthly_end: str | None = None


@dataclass(frozen=True, slots=True)
class SilenceInfo:
    """A stored silence; ``active`` is whether it mutes matching notifications right now."""

    id: str
    kind: str
    reason: str
    author: str
    models: list[str]
    providers: list[str]
    rules: list[str]
    hosts: list[str]
    starts_at: datetime | None
    ends_at: datetime | None
    weekly_days: list[str]
    weekly_start: str | None
    weekly_end: str | None
    timezone: str
    created_at: datetime | None
    expired_at: datetime | None
    active: bool
    monthly_days: list[int] = field(default_factory=list)
    monthly_weekdays: list[str] = field(default_factory=list)
    monthly_start: str | None = None
    monthly_end: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryAttemptInfo:
    attempt: int
    at: datetime
    ok: bool
    retryable: bool
    status_code: int | None
    detail: str
    state: str = "done"
    """done, in_flight, or interrupted (the alerter died during the attempt; see the README)."""


@dataclass(frozen=True, slots=True)
class NotificationInfo:
    """One message of the notification log with its delivery attempts."""

    id: str
    channel: str
    channel_kind: str
    route: str
    group_key: str
    reason: str
    status: NotificationStatus
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    firing: list[str]
    resolved: list[str]
    attempt_log: list[DeliveryAttemptInfo]


@dataclass(frozen=True, slots=True)
class NotificationFilter:
    status: NotificationStatus | None = None
    channel: str | None = None
    since: datetime | None = None
    limit: int = 50
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationPage:
    items: list[NotificationInfo]
    next_cursor: str | None = None


class AlertingData(Protocol):
    """The alerting pages' data access; the API implements it (its own tables plus the alerter
    over NATS). Calls that need the alerter raise :class:`AlerterUnavailable` when none answers."""

    async def test_channel(self, channel: str) -> TestSendResult: ...

    async def incidents(self, flt: IncidentFilter) -> IncidentPage: ...

    async def incident(self, incident_id: str) -> IncidentDetail | None: ...

    async def incident_for_episode(self, episode_id: str) -> str | None: ...

    async def act_on_incident(
        self, incident_id: str, action: IncidentAction, by: str, note: str | None
    ) -> IncidentActionResult: ...

    async def silences(self, include_expired: bool = False) -> list[SilenceInfo]: ...

    async def create_silence(self, silence: SilenceInput) -> SilenceInfo: ...

    async def expire_silence(self, silence_id: str) -> SilenceInfo | None: ...

    async def notifications(self, flt: NotificationFilter) -> NotificationPage: ...
