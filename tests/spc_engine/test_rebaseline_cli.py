"""``llmscope spc rebaseline`` against a running engine on a real nats-server."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from llmscope.bus.settings import BusSettings
from llmscope.bus.streams import ensure_streams
from llmscope.proto import subjects
from llmscope.proto.charts import chart_key, decode_record
from llmscope.spc_engine import rebaseline
from llmscope.spc_engine.service import serve
from llmscope.stack import cli
from llmscope.stack.ports import free_port

from .helpers import telemetry_stream
from .test_service import publish_all, settings, wait_checkpoint, wait_consumed


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert rebaseline.main([]) == 2
    assert "missing --chart, --by, --reason" in capsys.readouterr().err
    assert rebaseline.main(["--chart", "a.b.c.d.e", "--by", "ann"]) == 2
    assert "missing --reason" in capsys.readouterr().err
    assert rebaseline.main(["--chart", "not a key", "--by", "ann", "--reason", "x"]) == 2
    assert "not a chart key" in capsys.readouterr().err
    assert rebaseline.main(["--bogus"]) == 2
    assert rebaseline.main(["--help"]) == 0
    assert "--reason" in capsys.readouterr().out


def test_unreachable_nats_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    argv = ["--chart", "a.b.c.d.e", "--by", "ann", "--reason", "x", "--nats-url", url, "--timeout", "0.5"]
    assert rebaseline.main(argv) == 3
    assert "cannot reach NATS" in capsys.readouterr().err


async def test_rebaseline_and_list_against_a_running_engine(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    key = chart_key("ollama", "m1", "t-m1", "simple", "latency_ms")
    # Nobody subscribed answers at once (no responders); the running engine gets time to answer.
    common = ["--nats-url", nats_url, "--timeout", "10"]
    argv = ["--chart", key, "--by", "ann", "--reason", "new GPU", *common]

    # No engine yet: nobody answers, and there is nothing to list.
    assert await asyncio.to_thread(rebaseline.main, argv) == 3
    assert "no SPC engine answered" in capsys.readouterr().err
    assert await asyncio.to_thread(rebaseline.main, ["--list", *common]) == 0
    assert capsys.readouterr().out == ""

    events = telemetry_stream(200)
    await publish_all(js, events)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings(nats_url), stop))
    try:
        await wait_consumed(js, events, len(events))
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)

        async def armed() -> bool:
            try:
                view = decode_record((await kv.get(key)).value or b"").view
            except KeyNotFoundError:
                return False
            return view is not None and view.phase == "armed"

        # The snapshot after the last point: the availability chart arms only at the 200th probe,
        # in a later snapshot than the one that first shows the latency chart armed.
        await wait_checkpoint(js, events, len(events))
        assert await armed()

        assert await asyncio.to_thread(rebaseline.main, ["--list", *common]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [c["key"] for c in listed] == sorted(c["key"] for c in listed)
        mine = next(c for c in listed if c["key"] == key)
        assert (mine["phase"], mine["metric"]) == ("armed", "latency_ms")
        avail = chart_key("ollama", "m1", "t-m1", "*", "availability")
        assert next(c for c in listed if c["key"] == avail)["phase"] == "armed"  # 200 probes

        # Through the `llmscope` command, as a user types it.
        code = await asyncio.to_thread(cli.main, ["spc", "rebaseline", *argv])
        assert code == 0
        reply = json.loads(capsys.readouterr().out)
        assert reply == {"ok": True, "chart_key": key, "replica": 0, "cleared": reply["cleared"], "error": ""}
        record = decode_record((await kv.get(key)).value or b"")
        assert record.view is not None
        assert record.view.phase == "collecting"

        # The availability chart too: the failure rate is estimated afresh.
        argv = ["--chart", avail, "--by", "bo", "--reason", "proxy fixed", *common]
        assert await asyncio.to_thread(rebaseline.main, argv) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        availability = decode_record((await kv.get(avail)).value or b"").availability
        assert availability is not None
        assert (availability.phase, availability.progress) == ("collecting", 0)
        assert (availability.baseline_number, availability.baseline_by) == (1, "bo")
        assert availability.baseline_reason == "proxy fixed"

        refused = ["--chart", key.replace("latency_ms", "nope_ms"), "--by", "ann", "--reason", "x", *common]
        assert await asyncio.to_thread(rebaseline.main, refused) == 1
        assert json.loads(capsys.readouterr().out)["error"] == "no such chart"
    finally:
        stop.set()
        assert await task == 0
        await nc.close()


def test_model_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert rebaseline.main(["--model", "ollama/m1", "--by", "ann"]) == 2
    assert "missing --reason" in capsys.readouterr().err
    assert rebaseline.main(["--model", "m1", "--by", "ann", "--reason", "x"]) == 2
    assert "--model: PROVIDER/MODEL" in capsys.readouterr().err
    assert (
        rebaseline.main(["--model", "ollama/m1", "--chart", "a.b.c.d.e", "--by", "a", "--reason", "x"]) == 2
    )
    assert "one or the other" in capsys.readouterr().err
    assert rebaseline.main(["--chart", "a.b.c.d.e", "--target", "t", "--by", "a", "--reason", "x"]) == 2
    assert "--target goes with --model" in capsys.readouterr().err


async def test_a_whole_model_re_baselined_by_one_command(
    nats_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_streams(js, BusSettings())
    common = ["--by", "ann", "--reason", "new GPU", "--nats-url", nats_url, "--timeout", "10"]
    assert await asyncio.to_thread(rebaseline.main, ["--model", "ollama/m1", *common]) == 3
    assert "no SPC engine answered" in capsys.readouterr().err

    events = telemetry_stream(200)
    await publish_all(js, events)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings(nats_url), stop))
    try:
        await wait_consumed(js, events, len(events))
        code = await asyncio.to_thread(cli.main, ["spc", "rebaseline", "--model", "ollama/m1", *common])
        assert code == 0
        reply = json.loads(capsys.readouterr().out)
        assert (reply["ok"], reply["provider"], reply["model"], reply["target"]) == (True, "ollama", "m1", "")
        keys = [c["chart_key"] for c in reply["charts"]]
        assert len(keys) == 2 * 3 + 1  # two prompts, three metrics, and the availability chart
        assert chart_key("ollama", "m1", "t-m1", "*", "availability") in keys
        kv = await js.key_value(subjects.SPC_CHARTS_BUCKET)
        for key in keys:
            record = decode_record((await kv.get(key)).value or b"")
            view = record.view or record.availability
            assert view is not None
            assert view.phase == "collecting", key

        argv = ["--model", "ollama/m1", "--target", "t-other", *common]
        assert await asyncio.to_thread(rebaseline.main, argv) == 1
        assert json.loads(capsys.readouterr().out)["error"] == "no charts of ollama/m1 on target 't-other'"
    finally:
        stop.set()
        assert await task == 0
        await nc.close()
