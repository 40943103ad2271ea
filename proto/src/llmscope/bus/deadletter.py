"""The dead-letter sink: a message no handler can take is kept, with the reason, never dropped."""

from __future__ import annotations

import base64

from llmscope.bus.publisher import Publisher
from llmscope.proto import subjects
from llmscope.proto.base import new_id, utcnow
from llmscope.proto.deadletter import DeadLetterEvent


def dead_letter_event(
    *,
    source: str,
    subject: str,
    payload: bytes,
    reason: str,
    stream_seq: int | None = None,
    msg_id: str | None = None,
) -> DeadLetterEvent:
    """Wrap raw bytes and a reason into a ``deadletter.v1`` event (pure)."""
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return DeadLetterEvent(
        id=new_id(),
        ts=utcnow(),
        source=source,
        subject=subject,
        reason=reason[:4000],
        payload=text,
        payload_encoding=encoding,  # type: ignore[arg-type]
        stream_seq=stream_seq,
        msg_id=msg_id,
    )


class DeadLetters:
    """Publishes dead letters of one source service on ``llmscope.deadletter.v1.<source>``."""

    def __init__(self, publisher: Publisher, source: str) -> None:
        self._publisher = publisher
        self._source = source
        self._subject = subjects.deadletter(source)

    async def send(
        self,
        *,
        subject: str,
        payload: bytes,
        reason: str,
        stream_seq: int | None = None,
        msg_id: str | None = None,
    ) -> DeadLetterEvent:
        event = dead_letter_event(
            source=self._source,
            subject=subject,
            payload=payload,
            reason=reason,
            stream_seq=stream_seq,
            msg_id=msg_id,
        )
        await self._publisher.publish(self._subject, event)
        return event
