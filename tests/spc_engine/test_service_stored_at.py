"""The engine reads a delivery's stored time from its ack subject exactly as nats-py would."""

from __future__ import annotations

from nats.aio.msg import Msg

from llmscope.bus.consumer import Delivery
from llmscope.spc_engine.partition_consumer import stored_at
from tests.proto.test_codec import telemetry


def test_the_stored_time_is_nats_pys() -> None:
    reply = "$JS.ACK.TELEMETRY.p3.1.1234567.99.1733470000123456789.42"
    msg = Msg(_client=None, subject="s", reply=reply, data=b"")  # type: ignore[arg-type]
    expected = Msg(_client=None, subject="s", reply=reply, data=b"").metadata.timestamp  # type: ignore[arg-type]
    assert stored_at(Delivery(telemetry(), "s", 1234567, 1, msg)) == expected
