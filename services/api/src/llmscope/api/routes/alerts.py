"""Test sends through a channel and the notification log, both answered by the alerter over NATS."""

from __future__ import annotations

from typing import Annotated, Literal, NoReturn

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from llmscope.api.routes.fields import Cursor, Instant
from llmscope.api.runtime import Runtime
from llmscope.web.alerting import (
    AlerterRefused,
    AlerterUnavailable,
    NotificationFilter,
    NotificationPage,
    TestSendResult,
)


class TestBody(BaseModel):
    """Which channel: a configured channel's name, or a kind (email, slack, webhook, pagerduty),
    or ``tickets``: the ticket tracker (a test ticket is opened, commented on and closed)."""

    __test__ = False  # not a pytest class

    channel: Annotated[str, Field(min_length=1, max_length=200)]


def alerter_error(exc: AlerterUnavailable | AlerterRefused) -> NoReturn:
    """504 when no alerter answered; 422 naming the field when it refused the request."""
    if isinstance(exc, AlerterRefused):
        loc = ["body", *exc.field.split(".")] if exc.field else ["body"]
        raise HTTPException(
            422, [{"loc": loc, "field": exc.field, "msg": exc.message, "type": "value_error"}]
        ) from exc
    raise HTTPException(504, f"alerter unavailable: {exc}") from exc


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["alerts"])

    @api.post(
        "/alerts/test",
        response_model=TestSendResult,
        responses={504: {"description": "no alerter answered"}},
    )
    async def send_test(body: TestBody) -> TestSendResult:
        """Send a test message through one channel and report its answer (``ok``, ``status``,
        ``detail``, ``attempts``). A channel that refuses still answers 200 with ``ok: false``;
        the alerter holds the secrets, which never appear in the answer."""
        try:
            return await rt.alerting.test_channel(body.channel.strip())
        except (AlerterUnavailable, AlerterRefused) as exc:
            alerter_error(exc)

    @api.get(
        "/notifications",
        response_model=NotificationPage,
        responses={504: {"description": "no alerter answered"}},
    )
    async def notifications(
        status: Literal["sending", "sent", "failed", "expired"] | None = None,
        channel: str | None = None,
        since: Instant | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        cursor: Cursor = None,
    ) -> NotificationPage:
        """The notification log, newest first, each with its delivery attempts, last error and
        sent time. Pass ``next_cursor`` back as ``cursor`` for the next page."""
        flt = NotificationFilter(status=status, channel=channel, since=since, limit=limit, cursor=cursor)
        try:
            return await rt.alerting.notifications(flt)
        except (AlerterUnavailable, AlerterRefused) as exc:
            alerter_error(exc)

    return api
