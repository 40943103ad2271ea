"""How long the API waits for a test send: what the alerter can take (one 10 s attempt; the
ticket test's 30 s) plus a margin, not a fixed 30 s; and an alerter that does not answer is
named as such, with what is unknown."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from llmscope.alerter.testsend import TEST_ATTEMPT_TIMEOUT_S
from llmscope.alerter.tickets.testsend import TICKETS
from llmscope.api.alerting import Alerting
from llmscope.proto import subjects
from llmscope.proto.control import (
    TEST_REPLY_MARGIN_S,
    TEST_SEND_MAX_S,
    TICKET_TEST_MAX_S,
    reply_wait_s,
)
from llmscope.web.alerting import AlerterUnavailable
from tests.api.conftest import Api


def test_the_wait_is_what_the_alerter_takes_plus_a_margin() -> None:
    assert TEST_ATTEMPT_TIMEOUT_S == TEST_SEND_MAX_S == 10.0  # the alerter's bound is the API's
    assert 0 < TEST_REPLY_MARGIN_S <= 5.0
    assert reply_wait_s("email") == reply_wait_s("webhook") == TEST_SEND_MAX_S + TEST_REPLY_MARGIN_S
    assert reply_wait_s(TICKETS) == TICKET_TEST_MAX_S + TEST_REPLY_MARGIN_S


async def test_a_silent_alerter_is_named_as_such(api: Api, nc: NATS) -> None:
    asked = asyncio.Event()

    async def swallow(msg: Msg) -> None:  # an alerter that takes the request and never answers
        asked.set()

    assert Alerting(lambda: api.store.pool, lambda: nc).test_wait_s("email") == 15.0
    sub = await nc.subscribe(subjects.alerter_test(), cb=swallow)
    try:
        waits: list[str] = []

        def wait_s(channel: str) -> float:
            waits.append(channel)
            return 0.5

        alerting = Alerting(lambda: api.store.pool, lambda: nc, test_wait_s=wait_s)
        with pytest.raises(AlerterUnavailable) as caught:
            await alerting.test_channel("webhook")
        assert asked.is_set()
        assert waits == ["webhook"]
        assert str(caught.value) == (
            "the alerter did not answer within 0.5 s (a test send takes it at most 10 s): it is down"
            " or overloaded, and whether the test message went out is unknown"
        )
    finally:
        await sub.unsubscribe()
