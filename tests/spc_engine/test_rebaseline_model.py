"""Re-baselining a whole model in one request, on a real nats-server and the engine service."""

from __future__ import annotations

import asyncio

import msgspec
import nats

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.proto.charts import AVAILABILITY, ModelRebaselineReply, chart_key, decode_record
from llmscope.spc_engine.config import CHARTED_METRICS
from llmscope.spc_engine.engine import ChartSnapshot
from llmscope.spc_engine.service import serve
from llmscope.spc_engine.store import ChartStore

from .helpers import telemetry_stream
from .test_service import publish_all, settings, violations, wait_consumed


def charts_of(model: str) -> set[str]:
    target = f"t-{model}"
    keys = {chart_key("ollama", model, target, p, m) for p in ("simple", "medium") for m in CHARTED_METRICS}
    return keys | {chart_key("ollama", model, target, "*", AVAILABILITY)}


async def test_every_chart_of_one_model_in_one_request(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    # Two models, a shift on both after their charts armed: open episodes on both.
    events = telemetry_stream(600, models=("m1", "m2"), shift_at=400)
    await publish_all(js, events)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings(nats_url), stop))

    async def ask(**body: str) -> ModelRebaselineReply:
        raw = msgspec.json.encode(body)
        msg = await nc.request(subjects.spc_rebaseline_model(), raw, timeout=10)
        return msgspec.json.decode(msg.data, type=ModelRebaselineReply)

    try:
        await wait_consumed(js, events, len(events))
        before = await violations(js)
        opened = {v.chart_key for v in before if v.state == "open" and v.model == "m1"}
        assert opened, "the shift opened episodes on m1"

        reply = await ask(provider="ollama", model="m1", by="ann", reason="new GPU")
        assert reply.ok, reply.error
        assert (reply.provider, reply.model, reply.target, reply.replica) == ("ollama", "m1", "", 0)
        keys = [c.chart_key for c in reply.charts]
        assert keys == sorted(charts_of("m1"))  # every prompt and metric, and availability
        assert reply.cleared == sum(c.cleared for c in reply.charts) > 0

        # Each chart collects a new baseline recorded as ann's, in the bucket when the answer came.
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        for key in keys:
            record = decode_record((await kv.get(key)).value or b"")
            if record.meta.metric == AVAILABILITY:
                assert record.availability is not None
                assert (record.availability.phase, record.availability.baseline_by) == ("collecting", "ann")
                assert record.availability.baseline_reason == "new GPU"
            else:
                assert record.view is not None
                assert record.view.phase == "collecting", key
                snap = await ChartStore(kv, await js.key_value(subjects.SPC_STATE_BUCKET)).load(key)
                assert isinstance(snap, ChartSnapshot)
                assert (snap.state.pending_by, snap.state.pending_reason) == ("ann", "new GPU")
        # Their open episodes cleared, published before the answer; m2 was not touched.
        after = await violations(js)
        cleared = [v for v in after[len(before) :] if v.state == "cleared"]
        assert len(cleared) == reply.cleared
        assert {v.chart_key for v in cleared} == opened
        for key in charts_of("m2"):
            record = decode_record((await kv.get(key)).value or b"")
            view = record.view or record.availability
            assert view is not None
            assert view.phase == "armed", key

        # One target only; a target or model without charts is refused with the reason.
        one = await ask(provider="ollama", model="m2", target="t-m2", by="bo", reason="driver update")
        assert one.ok
        assert [c.chart_key for c in one.charts] == sorted(charts_of("m2"))
        none = await ask(provider="ollama", model="m2", target="t-nope", by="bo", reason="x")
        assert (none.ok, none.error) == (False, "no charts of ollama/m2 on target 't-nope'")
        unknown = await ask(provider="ollama", model="nope", by="bo", reason="x")
        assert (unknown.ok, unknown.error, unknown.charts) == (False, "no charts of ollama/nope", ())
        # A bad request is answered too, naming the field.
        bad = await ask(provider="ollama", model="m1", by="ann")
        assert not bad.ok
        assert "reason" in bad.error
        empty = await ask(provider="ollama", model="m1", by="", reason="x")
        assert not empty.ok
        assert "by" in empty.error
    finally:
        stop.set()
        assert await task == 0
        await nc.close()
