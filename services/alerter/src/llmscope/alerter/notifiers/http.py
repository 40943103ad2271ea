"""One HTTP POST with the failure classification every HTTP channel shares.

Redirects are not followed: a webhook that answers 3xx is misconfigured (a permanent failure),
and following a loop of them only ended in an error whose repr carried the secret URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from llmscope.alerter.destinations import DestinationRefused, Destinations
from llmscope.alerter.retry import DeliveryError, classify_http, describe_error


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    data: bytes,
    headers: Mapping[str, str],
    destinations: Destinations | None = None,
) -> tuple[int, str]:
    """POST and return (status, body); raise DeliveryError unless the answer is 2xx, or before
    sending anything when ``destinations`` refuses the URL's host."""
    if destinations is not None:
        await destinations.check_url(url)
    try:
        async with session.post(url, data=data, headers=dict(headers), allow_redirects=False) as resp:
            body = await resp.text(errors="replace")
            error = classify_http(resp.status, resp.headers, body)
            if error is not None:
                raise error
            return resp.status, body
    except DestinationRefused as exc:
        # The connector's resolver refused what the name resolves to now (see destinations).
        raise DeliveryError(str(exc), retryable=False) from None
    except aiohttp.InvalidURL:
        raise DeliveryError("invalid URL (not shown: it may hold a credential)", retryable=False) from None
    except aiohttp.ClientError as exc:
        # from None: a traceback logged further up would print the request URL again.
        raise DeliveryError(f"transport error: {describe_error(exc)}", retryable=True) from None


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
    destinations: Destinations | None = None,
) -> tuple[int, str]:
    """:func:`post` of ``payload`` encoded as JSON; ``headers`` add to (or replace) the JSON
    content type."""
    return await post(
        session,
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        destinations=destinations,
    )
