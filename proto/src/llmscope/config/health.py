"""A small HTTP server for services without one of their own: /healthz, /readyz and /metrics."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry

from llmscope.config.env import ConfigError


class HealthServer:
    """Serves liveness, readiness (from a callable) and the service's registry on one port."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool], registry: CollectorRegistry) -> None:
        self._host = host
        self._port = port
        self._ready = ready
        self._registry = registry
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ready = self._ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def start_health_server(
    host: str,
    port: int,
    *,
    ready: Callable[[], bool],
    registry: CollectorRegistry,
    host_variable: str,
    port_variable: str,
) -> HealthServer | None:
    """A started :class:`HealthServer` on ``host``:``port``, or None when ``port`` is 0 (no
    server). A port taken or an address not of this host is the operator's to fix, so it stops
    the service with a :class:`ConfigError` naming the variables that set them
    (``port_variable``, ``host_variable``), not with a traceback."""
    if not port:
        return None
    server = HealthServer(host, port, ready=ready, registry=registry)
    try:
        await server.start()
    except OSError as exc:
        await server.stop()
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"{port_variable}={port}: cannot listen on {host_variable}={host} ({reason}); "
            "choose another port or 0 to disable"
        ) from None
    return server
