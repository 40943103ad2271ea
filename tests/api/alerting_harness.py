"""A real alerter with its control responder, next to the API under test (same NATS and Postgres)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import nats
from nats.js import JetStreamContext

from llmscope.alerter.api_view import ApiView
from llmscope.alerter.control import ControlResponder
from llmscope.config.env import Env
from llmscope.proto.incident import IncidentAnalysis, IncidentEvent, MetricMove, SimilarIncident
from tests.alerter.factories import LOOPBACK_ALLOWED
from tests.alerter.harness import Running, start_alerter


@dataclass
class LiveAlerter:
    run: Running
    control: ControlResponder


@contextlib.asynccontextmanager
async def live_alerter(
    database_url: str,
    nats_url: str,
    js: JetStreamContext | None,
    env: Mapping[str, str] | None = None,
    *,
    repage_after_resolve: float = 3600.0,
    **options: Any,
) -> AsyncIterator[LiveAlerter]:
    """The alerter's loops (and, with ``js``, its violation consumer) plus its control responder;
    ``options`` as ``start_alerter``'s."""
    nc = await nats.connect(nats_url)
    # The API's settings and telemetry over this connection, even without a violation consumer.
    run = await start_alerter(
        database_url,
        js,
        env or {},
        api=ApiView(nc, timeout=2.0),
        repage_after_resolve=repage_after_resolve,
        **options,
    )
    control = ControlResponder(
        run.alerter,
        Env({**LOOPBACK_ALLOWED, **(env or {})}),
        public_url="http://scope.test",
        session=run.session,
        test_attempt_timeout=2.0,
    )
    await control.start(nc)
    try:
        yield LiveAlerter(run, control)
    finally:
        await control.stop()
        await run.close()
        await nc.close()


def incident_event(
    incident_id: str,
    revision: int,
    *,
    opened_at: datetime,
    state: str = "open",
    change: str = "opened",
    models: tuple[str, ...] = ("llama3.1:8b",),
    episode_ids: tuple[str, ...] = (),
    llm: bool = False,
    similar: tuple[SimilarIncident, ...] = (),
    title: str = "ollama/llama3.1:8b on gpu-1: latency_ms out of control (R1)",
) -> IncidentEvent:
    analysis = IncidentAnalysis(
        summary="latency_ms rose 140% against the baseline (R1)"
        + ("" if llm else "\n(Deterministic analysis only: LLM disabled.)"),
        moves=(
            MetricMove(
                model=models[0],
                metric="latency_ms",
                baseline=800.0,
                observed=1920.0,
                change_percent=140.0,
                deviation_sigma=4.2,
                prompt_id="long-1",
            ),
        ),
        rules=("R1",),
        llm_status="ok" if llm else "disabled",
        llm_model="sim-llm" if llm else None,
        hypothesis="GPU memory pressure after a model swap" if llm else None,
        engineering_email="Subject: latency regression" if llm else None,
        customer_notice="Some requests are slower than usual." if llm else None,
    )
    return IncidentEvent(
        id=f"{incident_id}:{revision}",
        ts=opened_at + timedelta(seconds=revision),
        incident_id=incident_id,
        revision=revision,
        change=change,  # type: ignore[arg-type]
        state=state,  # type: ignore[arg-type]
        title=title,
        severity="critical",
        provider="ollama",
        host="gpu-1",
        models=models,
        cascade=len(models) > 1,
        episode_ids=episode_ids,
        violation_count=len(episode_ids),
        opened_at=opened_at,
        last_violation_at=opened_at + timedelta(seconds=5),
        analysis=analysis,
        similar=similar,
    )
