"""A client for the simulator's control API (used by ``llmscope sim inject`` and by tests)."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from llmscope.simulator.anomalies import InjectRequest


class SimControlError(RuntimeError):
    """The simulator refused the command or could not be reached."""


class SimClient:
    """Talks to ``/_sim/*`` of the simulator at ``url``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _call(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.request(method, self._url + path, data=body, headers=headers) as resp,
            ):
                payload = await resp.json(content_type=None)
                if resp.status >= 400:
                    reason = payload.get("error") if isinstance(payload, dict) else payload
                    raise SimControlError(f"simulator answered {resp.status}: {reason}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SimControlError(f"cannot reach the simulator at {self._url}: {exc!r}") from exc
        if not isinstance(payload, dict):
            raise SimControlError(f"unexpected answer from the simulator: {payload!r}")
        return payload

    async def inject(self, request: InjectRequest) -> dict[str, Any]:
        """Activate an anomaly; returns its description (with its ``id``)."""
        answer = await self._call("POST", "/_sim/inject", msgspec.json.encode(request))
        anomaly = answer["anomaly"]
        assert isinstance(anomaly, dict)
        return anomaly

    async def clear(self, anomaly_id: int | None = None) -> int:
        """Clear one anomaly or all; returns how many were cleared."""
        path = "/_sim/inject" if anomaly_id is None else f"/_sim/inject/{anomaly_id}"
        answer = await self._call("DELETE", path)
        return int(answer["cleared"])

    async def state(self) -> dict[str, Any]:
        return await self._call("GET", "/_sim/state")
