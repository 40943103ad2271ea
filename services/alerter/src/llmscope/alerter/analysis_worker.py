"""The incidents' analyses, off the ack path: one due incident at a time, its deterministic
summary, the LLM's hypothesis when one is configured, and past incidents that resemble it. A part
of ``Alerter`` (service.py), on ``service_base.AlerterBase``."""

from __future__ import annotations

from msgspec import structs

from llmscope.alerter.analysis import summarize
from llmscope.alerter.incidents import search_text
from llmscope.alerter.llm import LlmResult, analyze
from llmscope.alerter.model import Alert
from llmscope.alerter.service_base import AlerterBase
from llmscope.alerter.store import AnalysisJob
from llmscope.config.logs import get_logger
from llmscope.proto.incident import IncidentAnalysis

log = get_logger("llmscope.alerter")


class AnalysisWorker(AlerterBase):
    """Analyses of incidents, written and published."""

    async def analyze_once(self) -> bool:
        """Analyse one due incident; False when none is due. Never raises for the LLM's sake."""
        job = await self.store.claim_analysis()
        if job is None:
            return False
        analysis, similar = await self.analysis_for(job)
        await self.store.save_analysis(job, analysis, similar)
        self._wake_outbox.set()
        return True

    async def analysis_for(self, job: AnalysisJob) -> tuple[IncidentAnalysis, list[tuple[str, float]]]:
        telemetry = await self.api.telemetry_points(job.events)
        now = self.store.clock()
        # Every failed probe of an outage, not only the few that tripped its rule (kinds of the
        # latest 200 read: enough to name them, bounded for an outage of days).
        alerts = [
            Alert(e, cleared=structs.replace(e, state="cleared", ts=job.cleared_at[e.episode_id]))
            if e.episode_id in job.cleared_at
            else Alert(e)
            for e in job.events
        ]
        outages = await self.api.outages_for(alerts, now, recent=200)
        summary, moves, rules = summarize(
            job.events, cleared=job.cleared, telemetry=telemetry, outages=outages
        )
        llm = self._opts.llm
        if llm is None:
            result = LlmResult("disabled")
        else:
            result = await analyze(
                self._session, llm, job.title, summary, critical=job.severity == "critical"
            )
        if result.status != "ok" and llm is not None:
            log.warning(
                "LLM analysis unavailable; the deterministic summary stands",
                incident=job.incident_id,
                status=result.status,
                error=(result.error or "")[:200],
            )
        text = search_text(job.title, rules, job.events)
        similar = await self.store.similar_incidents(job.incident_id, text, job.opened_at)
        marked = (
            summary
            if result.status == "ok"
            else f"{summary}\n(Deterministic analysis only: LLM {result.status}.)"
        )
        analysis = IncidentAnalysis(
            summary=marked,
            moves=moves,
            rules=rules,
            llm_status=result.status,
            llm_error=result.error,
            llm_model=llm.model if llm else None,
            hypothesis=result.hypothesis,
            engineering_email=result.engineering_email,
            customer_notice=result.customer_notice,
        )
        return analysis, similar
