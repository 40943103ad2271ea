"""Per-model status for the status page and badges: a pure function of the model's recent signals.

A model's status is one of ``maintenance``, ``operational``, ``degraded``, ``outage``,
``stopped`` or ``unknown``, decided in this order of precedence (the first that applies wins):

0. ``maintenance``: an active maintenance window (the alerter's silences of kind
   ``maintenance``) covers the whole model: its provider, model and one of its hosts match the
   window's patterns (empty = any), and the window is not limited to some rules. Whatever the
   probes say during planned work is expected; the reason is shown to signed-in readers.
1. ``stopped`` (probed before) or ``unknown`` (never probed): every target of the model stopped
   reporting: none was probed within
   ``stale_probes`` of its own probe intervals (at least ``stale_min_s``, at most the window).
   Every other status is a claim about recent behaviour; without recent probes (a target removed
   from the prober's configuration, a prober stopped, the model is new) an old, never-cleared
   violation must not keep the model in "outage" forever, and a model whose probes stopped a
   minute ago must not stay "operational" for the rest of the window. The reasons say
   "stopped reporting" and since when.
2. ``outage``: on a target probed within the window, the current run of failed probes reached
   the alarm length (the engine's availability chart's ``fail_run``, else ``alarm_run``), or the
   engine's availability chart has an open ``AVAILABILITY`` episode, or the model has an open
   ``AVAILABILITY`` violation (acknowledged or not; resolved ones do not count).
3. ``degraded``: any other open ``critical`` violation (a model that answers, only slower, is
   degraded, not down), an open ``ERROR_RATE`` episode or violation (whatever its severity),
   or a target whose success ratio in the window is below ``min_success_ratio`` (only judged
   from ``min_probes`` probes on, so one failure among three probes is no verdict).
4. ``operational``: none of the above.

A live target whose latest probes failed, fewer in a row than the alarm length, keeps the
status the rules give, and the reasons name the run ("2 failed probes in a row on ... (an
outage from 3)"): a hanging endpoint's probes each take their whole timeout.

Violations attributed to a target that stopped reporting are ignored (that target is stale,
not failing); while the model's other targets decide its status, each stopped one is named in
the reasons. ``warning`` and ``info`` violations never change the status:
they are the tiers below "page me" (3-sigma points, Nelson tests, TTFT and tokens/s charts),
which on many charts fire often enough to keep every model "degraded" for nothing.
A model's status is the worst of its live targets'. Maintenance windows are read from the
alerter when it answers; when it does not, no model is in maintenance (the page never waits on
the alerter for long, nor fails with it).

The overall status of a report is :func:`overall`: the worst *health* wins (``outage`` >
``degraded``); models without recent probes (``stopped``, ``unknown``) make it ``stopped`` or
``unknown`` only when every model is so, and otherwise read as partial: ``degraded``, with a
label that counts them ("1 of 5 stopped reporting"); then ``maintenance``, then ``operational``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Literal, Protocol

from llmscope.proto.charts import AvailabilityView
from llmscope.web.userinfo import without_password as shown

# ``stopped`` came after the others (API v1 answered ``unknown`` for it): a client that knows
# only the first five should read it as it read ``unknown``.
Status = Literal["operational", "degraded", "outage", "unknown", "maintenance", "stopped"]
STATUSES: tuple[Status, ...] = ("operational", "degraded", "outage", "unknown", "maintenance", "stopped")
# What pages show for ``stopped`` (see ModelStatus.label), and every label a page counts, worst
# first: the overview's summary counts rows by the words they show.
STOPPED = "stopped reporting"
LABELS: tuple[str, ...] = ("outage", "degraded", STOPPED, "unknown", "maintenance", "operational")


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """An active maintenance window as the alerter reports it (shell patterns; empty = any)."""

    reason: str
    providers: Sequence[str] = ()
    models: Sequence[str] = ()
    hosts: Sequence[str] = ()
    rules: Sequence[str] = ()


def _matches(patterns: Sequence[str], values: Iterable[str]) -> bool:
    return not patterns or any(fnmatchcase(v, p) for p in patterns for v in values)


def covering_window(
    windows: Iterable[MaintenanceWindow], provider: str, model: str, hosts: Iterable[str]
) -> MaintenanceWindow | None:
    """The first window that covers the whole model (a rule-limited one covers only some signals)."""
    hosts = list(hosts)
    for w in windows:
        whole = not w.rules
        if (
            whole
            and _matches(w.providers, [provider])
            and _matches(w.models, [model])
            and _matches(w.hosts, hosts)
        ):
            return w
    return None


@dataclass(frozen=True, slots=True)
class StatusPolicy:
    """The thresholds a status is judged by."""

    window_s: float = 15 * 60
    """Success ratios are taken over this window; a target with no probe in it is stale."""
    stale_probes: float = 10.0
    """A target missing this many of its own probe intervals stopped reporting..."""
    stale_min_s: float = 60.0
    """... but never sooner than this (a prober restarting, a slow flush to the store)."""
    min_success_ratio: float = 0.95
    min_probes: int = 20
    alarm_run: int = 3
    """Failed probes in a row that mean outage where the engine's chart does not say (its default)."""


@dataclass(frozen=True, slots=True)
class TargetSignals:
    """One target of a model over the status window: probe counts and the current failure run."""

    target: str
    probes: int
    ok: int
    failure_run: int
    last_probe: datetime
    run_since: datetime | None = None
    """When the current run of failed probes started (its first failed probe)."""
    availability: AvailabilityView | None = None
    spacing_s: float | None = None
    """Mean seconds between its probes in the window (None: fewer than two)."""
    max_gap_s: float | None = None
    """The longest wait between two of its probes in the window: a hung endpoint's timeouts."""
    run_kinds: tuple[str, ...] = ()
    """What the probes of the current failure run answered (``timeout``, ``rate_limited`` ...)."""


def stale_after_s(target: TargetSignals, policy: StatusPolicy) -> float:
    """Seconds without a probe after which ``target`` stopped reporting: ``stale_probes`` of its
    probe intervals, at least ``stale_min_s`` and twice its longest gap in the window (a probe
    is stamped when it starts: an endpoint that hangs until the probe's timeout leaves gaps that
    long, and is failing, not silent); the whole window where its pace is unknown."""
    if target.spacing_s is None or target.spacing_s <= 0:
        return policy.window_s
    gap = 2 * (target.max_gap_s or 0.0)
    return min(policy.window_s, max(policy.stale_min_s, policy.stale_probes * target.spacing_s, gap))


def _when(ts: datetime, now: datetime) -> str:
    """A time in a reason: the clock within a day, the date too beyond."""
    utc = ts.astimezone(UTC)
    return utc.strftime("%H:%M:%S UTC" if now - ts < timedelta(days=1) else "%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True, slots=True)
class OpenViolations:
    """Open (neither cleared nor resolved) violations of one target, rule and severity."""

    target: str
    rule: str
    severity: str
    count: int
    since: datetime


@dataclass(frozen=True, slots=True)
class StatusInputs:
    """Everything one model's status is computed from."""

    provider: str
    model: str
    last_seen: datetime | None = None
    """The model's last probe ever (the models table): the 'since' of an unknown status."""
    targets: Sequence[TargetSignals] = ()
    violations: Sequence[OpenViolations] = ()
    uptime_24h: float | None = None
    uptime_7d: float | None = None
    maintenance: MaintenanceWindow | None = None
    """The active maintenance window covering the model, if any (see :func:`covering_window`)."""


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """A model's status, since when (where known), its last probe, uptimes and why."""

    provider: str
    model: str
    status: Status
    since: datetime | None = None
    last_probe: datetime | None = None
    uptime_24h: float | None = None
    uptime_7d: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """What a page shows for it: ``stopped`` in words, "stopped reporting" (its probes
        stopped: a target removed, a prober down); the other statuses as they are."""
        return STOPPED if self.status == "stopped" else self.status


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The status of every enabled model and the overall status."""

    status: Status
    generated_at: datetime
    models: list[ModelStatus]

    def find(self, provider: str, model: str) -> ModelStatus | None:
        return next((m for m in self.models if (m.provider, m.model) == (provider, model)), None)

    @property
    def label(self) -> str:
        """The overall status as a page or badge shows it (see :func:`overall`)."""
        return overall(self.models).label


@dataclass(frozen=True, slots=True)
class PublicModelStatus:
    """What an anonymous reader of a public status page sees of a model: its name and status."""

    provider: str
    model: str
    status: Status


@dataclass(frozen=True, slots=True)
class PublicStatusReport:
    """The report without anything but names and statuses (no hosts, targets, errors or times)."""

    status: Status
    models: list[PublicModelStatus]

    @property
    def label(self) -> str:
        return overall(self.models).label


def public_view(report: StatusReport) -> PublicStatusReport:
    return PublicStatusReport(
        status=report.status,
        models=[PublicModelStatus(m.provider, m.model, m.status) for m in report.models],
    )


def _earliest(values: Iterable[datetime | None]) -> datetime | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def model_status(inputs: StatusInputs, now: datetime, policy: StatusPolicy | None = None) -> ModelStatus:
    """The status of one model at ``now`` (see the module docstring for the rules)."""
    policy = policy or StatusPolicy()
    fresh = [(now - t.last_probe).total_seconds() <= stale_after_s(t, policy) for t in inputs.targets]
    live = [t for t, f in zip(inputs.targets, fresh, strict=True) if f]
    last_probe = max((t.last_probe for t in inputs.targets), default=None) or inputs.last_seen
    # Each target that stopped reporting, newest first: named whatever the status, never dropped
    # in silence while the model's other targets carry on.
    stopped = [
        f"{shown(t.target) or 'a target'} stopped reporting: no probe since {_when(t.last_probe, now)}"
        for t in sorted(
            (t for t, f in zip(inputs.targets, fresh, strict=True) if not f),
            key=lambda t: t.last_probe,
            reverse=True,
        )
    ]

    def result(status: Status, since: datetime | None, reasons: list[str]) -> ModelStatus:
        return ModelStatus(
            provider=inputs.provider,
            model=inputs.model,
            status=status,
            since=since,
            last_probe=last_probe,
            uptime_24h=inputs.uptime_24h,
            uptime_7d=inputs.uptime_7d,
            reasons=reasons,
        )

    if inputs.maintenance is not None:
        return result("maintenance", None, [f"maintenance: {inputs.maintenance.reason}"])
    if not live:
        if stopped:
            return result("stopped", last_probe, stopped)
        if last_probe is not None:
            return result(
                "stopped", last_probe, [f"stopped reporting: no probe since {_when(last_probe, now)}"]
            )
        return result("unknown", None, ["no probe yet"])

    names = {t.target for t in live}
    # A violation without a target (older events) belongs to the whole model.
    violations = [v for v in inputs.violations if v.target in names or not v.target]

    outage: list[tuple[str, datetime | None]] = []
    degraded: list[tuple[str, datetime | None]] = []
    failing: list[str] = []
    for t in live:
        view = t.availability
        alarm = view.fail_run if view is not None and view.fail_run > 0 else policy.alarm_run
        probes = "probe" if t.failure_run == 1 else "probes"
        run = f"{t.failure_run} failed {probes} in a row on {shown(t.target)}"
        if t.run_kinds:
            run += ": " + ", ".join(sorted(t.run_kinds))
        if t.failure_run >= alarm:
            outage.append((run, t.run_since))
        elif t.failure_run > 0:
            # Not yet an outage, but said: a hanging endpoint's probes each take their whole
            # timeout, so the alarm's last one can be a minute or more after the first.
            failing.append(f"{run} (an outage from {alarm})")
        episodes = view.open_episodes if view is not None else ()
        if "AVAILABILITY" in episodes:
            outage.append((f"open AVAILABILITY episode on {shown(t.target)}", t.run_since))
        if "ERROR_RATE" in episodes:
            degraded.append((f"open ERROR_RATE episode on {shown(t.target)}", None))
        if t.probes >= policy.min_probes and t.ok / t.probes < policy.min_success_ratio:
            degraded.append((f"{t.ok / t.probes:.1%} successful probes on {shown(t.target)}", None))
    for v in violations:
        what = f"{v.count} open {v.severity} {v.rule} violation{'s' if v.count > 1 else ''}"
        if v.rule == "AVAILABILITY" and v.severity != "info":
            outage.append((what, v.since))
        elif v.severity == "critical" or v.rule == "ERROR_RATE":
            degraded.append((what, v.since))

    if outage:
        return result("outage", _earliest(s for _, s in outage), [r for r, _ in outage] + failing + stopped)
    if degraded:
        return result(
            "degraded", _earliest(s for _, s in degraded), [r for r, _ in degraded] + failing + stopped
        )
    return result("operational", None, failing + stopped)


class HasStatus(Protocol):
    @property
    def status(self) -> Status: ...


@dataclass(frozen=True, slots=True)
class Overall:
    """The overall status of several models and the words a page or badge shows for it."""

    status: Status
    label: str


NOTHING_MONITORED = Overall("unknown", "nothing monitored yet")


def _part(n: int, total: int, what: str, everyone: str) -> str:
    return everyone if n == total else f"{n} of {total} {what}"


def overall(models: Sequence[HasStatus]) -> Overall:
    """The overall status of ``models``, by these rules, the first that applies:

    1. no models: ``unknown``, "nothing monitored";
    2. the worst health wins: any ``outage``: ``outage`` ("2 of 5 down"), else any ``degraded``:
       ``degraded`` ("1 of 5 degraded");
    3. every model without recent probes: ``stopped`` ("all stopped reporting") when any was
       probed before, ``unknown`` ("no probe yet") when none ever was;
    4. some models stopped reporting, the rest healthy or in maintenance: partial, so
       ``degraded`` ("1 of 5 stopped reporting"), never as if all had stopped;
    5. any in ``maintenance``: ``maintenance`` ("1 of 5 in maintenance");
    6. ``operational`` ("all operational").

    A model never probed yet (``unknown``: just added, its first probe due) does not make the
    whole degraded, as a new monitor's "pending" does not in other tools: adding a model would
    otherwise turn the status page yellow until its first probe. It is named after the other
    words instead ("all probed operational · 1 never probed"), as stopped models are after the
    health words ("1 of 5 down · 1 stopped reporting"): a silent model may be down, and is never
    dropped.
    """
    total = len(models)
    if not total:
        return NOTHING_MONITORED
    n: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for m in models:
        n[m.status] += 1
    never = [f"{n['unknown']} never probed"] * bool(n["unknown"])
    notes = [f"{n['stopped']} {STOPPED}"] * bool(n["stopped"]) + never

    def with_notes(status: Status, words: str, extra: list[str]) -> Overall:
        return Overall(status, " · ".join([words, *extra]))

    if n["outage"]:
        return with_notes("outage", _part(n["outage"], total, "down", "all down"), notes)
    if n["degraded"]:
        return with_notes("degraded", _part(n["degraded"], total, "degraded", "all degraded"), notes)
    if n["stopped"] == total:
        return Overall("stopped", f"all {STOPPED}")
    if n["unknown"] == total:
        return Overall("unknown", "no probe yet")
    if n["stopped"]:
        # Every model silent reads as stopped; some as partial.
        status: Status = "stopped" if n["stopped"] + n["unknown"] == total else "degraded"
        return with_notes(status, _part(n["stopped"], total, STOPPED, ""), never)
    if n["maintenance"]:
        return with_notes(
            "maintenance", _part(n["maintenance"], total, "in maintenance", "all in maintenance"), never
        )
    if never:
        return with_notes("operational", "all probed operational", never)
    return Overall("operational", "all operational")


def overall_status(models: Sequence[HasStatus]) -> Status:
    """The overall status of ``models`` (see :func:`overall`)."""
    return overall(models).status


def status_report(
    inputs: Sequence[StatusInputs], now: datetime, policy: StatusPolicy | None = None
) -> StatusReport:
    """Every model's status, sorted by provider and model, with the overall status."""
    models = [model_status(i, now, policy) for i in sorted(inputs, key=lambda i: (i.provider, i.model))]
    return StatusReport(status=overall_status(models), generated_at=now, models=models)
