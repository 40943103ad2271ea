"""One HTTP POST with the failure classification every HTTP channel shares."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from llmscope.alerter.retry import DeliveryError, classify_http


async def post(
    session: aiohttp.ClientSession, url: str, *, data: bytes, headers: Mapping[str, str]
) -> tuple[int, str]:
    """POST and return (status, body); raise DeliveryError unless the answer is 2xx."""
    try:
        async with session.post(url, data=data, headers=dict(headers)) as resp:
            body = await resp.text(errors="replace")
            error = classify_http(resp.status, resp.headers, body)
            if error is not None:
                raise error
            return resp.status, body
    except aiohttp.InvalidURL:
        raise DeliveryError("invalid URL (not shown: it may hold a credential)", retryable=False) from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"transport error: {exc!r}", retryable=True) from exc
