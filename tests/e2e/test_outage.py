"""An outage from start to end through the whole stack: the simulated endpoint fails every probe,
the SPC engine opens an AVAILABILITY episode, the alerter pages and opens an incident; the
endpoint recovers, the episode clears under the same episode id, the incident resolves by
itself, the webhook receives the resolved message and ``/api/status`` says operational again.

Metric charts never freeze their limits here (a baseline longer than the test), so latency
noise at the demo pace raises no violation and the availability chart is the only one that
speaks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmscope.stack.ports import free_port
from tests.alerter.factories import LOOPBACK_ALLOWED
from tests.e2e.stack import llmscope_up, wait_for

pytestmark = pytest.mark.e2e

MODEL = "llama3.1:8b"


class _Hook(BaseHTTPRequestHandler):
    server: _HookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HookServer(ThreadingHTTPServer):
    received: list[dict[str, Any]]


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP server keeping every JSON body posted to it."""
    server = _HookServer(("127.0.0.1", free_port()), _Hook)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", server.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _status(client: httpx.Client, seen: list[dict[str, Any]] | None = None) -> str | None:
    """The model's status on /api/status; its whole entry is kept in ``seen`` for the failure message."""
    reply = client.get("/api/status")
    if reply.status_code != 200:
        return None
    for m in reply.json()["models"]:
        if (m["provider"], m["model"]) == ("ollama", MODEL):
            if seen is not None:
                seen[:] = [m]
            return str(m["status"])
    return None


def _probes(client: httpx.Client) -> int:
    reply = client.get("/api/stats/spc", params={"provider": "ollama", "model": MODEL, "hours": 1})
    return len(reply.json().get("points", [])) if reply.status_code == 200 else 0


def _availability(client: httpx.Client) -> list[dict[str, Any]]:
    reply = client.get("/api/violations", params={"model": MODEL, "limit": 100})
    reply.raise_for_status()
    body = reply.json()
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return [v for v in items if v["rule"] == "AVAILABILITY"]


def _incident_of(client: httpx.Client, episode_id: str) -> dict[str, Any] | None:
    reply = client.get("/api/incidents", params={"model": MODEL, "limit": 50})
    if reply.status_code != 200:
        return None
    for item in reply.json()["items"]:
        detail: dict[str, Any] = client.get(f"/api/incidents/{item['id']}").json()
        if episode_id in detail["episode_ids"]:
            return detail
    return None


def test_an_outage_clears_resolves_its_incident_and_the_status_recovers(data_dir: Path) -> None:
    with webhook_receiver() as (hook_url, received):
        env = {
            "LLMSCOPE_SIM_MODELS": f"{MODEL}@sim-gpu-1",
            "LLMSCOPE_SIM_SEED": "11",
            "LLMSCOPE_SIM_TIME_SCALE": "0.01",
            "LLMSCOPE_PROBER_INTERVAL_S": "0.05",
            "LLMSCOPE_SPC_BASELINE_N": "1000000",
            "LLMSCOPE_WEBHOOK_URL": hook_url,
            **LOOPBACK_ALLOWED,  # the receiver is on loopback, which channels refuse by default
            "LLMSCOPE_ALERTER_GROUP_WAIT_S": "1",
            "LLMSCOPE_ALERTER_GROUP_INTERVAL_S": "1",
        }
        with llmscope_up(data_dir, env) as stack, stack.client() as client:
            # Probed and stored; /api/status is first asked once the outage runs (it keeps a
            # report for 5 s, and every second of outage needs 19 of good probes after it
            # before the success ratio over the status window is back above 95 %).
            wait_for(lambda: _probes(client), 90, what=lambda: f"the model probed\n{stack.log()}")
            # On a busy machine the first probes may fail while the simulator starts: an episode
            # of its own, which must be over before this outage begins.
            wait_for(
                lambda: all(v["state"] == "cleared" for v in _availability(client)),
                60,
                what=lambda: f"no AVAILABILITY episode open before the outage\n{stack.log()}",
            )
            before = {v["id"] for v in _availability(client)}

            down = stack.llmscope("sim", "inject", "outage", "--model", MODEL)
            assert down.returncode == 0, down.stderr
            opened = wait_for(
                lambda: [v for v in _availability(client) if v["id"] not in before],
                60,
                what=lambda: f"an AVAILABILITY violation\n{stack.log()}",
            )
            assert isinstance(opened, list)
            assert len(opened) == 1, opened
            violation: dict[str, Any] = opened[0]
            episode = violation["episode_id"]
            assert violation["severity"] == "critical"
            assert wait_for(lambda: _status(client) == "outage", 30, what="status outage")

            # The endpoint recovers once the outage was paged (an episode over within the group
            # wait is never paged, so it would have no resolved message either).
            def paged() -> list[dict[str, Any]]:
                return [n for n in received if episode in {f["episode_id"] for f in n["firing"]}]

            wait_for(paged, 60, what=lambda: f"the outage paged\n{stack.log()}")
            back = stack.llmscope("sim", "inject", "clear")
            assert back.returncode == 0, back.stderr

            def cleared() -> dict[str, Any] | None:
                detail: dict[str, Any] = client.get(f"/api/violations/{violation['id']}").json()
                return detail["violation"] if detail["violation"]["state"] == "cleared" else None

            # The API closes an episode only with a clear carrying the open event's episode id.
            wait_for(cleared, 60, what=lambda: f"the AVAILABILITY violation cleared\n{stack.log()}")
            assert [v["episode_id"] for v in _availability(client) if v["id"] not in before] == [episode]

            incident = wait_for(
                lambda: (i := _incident_of(client, episode)) and i["incident"]["state"] == "resolved" and i,
                60,
                what=lambda: f"the outage's incident resolved\n{stack.log()}",
            )
            assert incident["incident"]["resolved_by"] == "llmscope (all violations cleared)"  # type: ignore[index]

            def resolved_message() -> list[dict[str, Any]]:
                return [n for n in received if episode in {r["episode_id"] for r in n["resolved"]}]

            wait_for(resolved_message, 60, what=lambda: f"the resolved webhook\n{stack.log()}")
            [message] = resolved_message()
            [resolved] = [r for r in message["resolved"] if r["episode_id"] == episode]
            assert resolved["state"] == "cleared"

            # Failed probes count against the success ratio over the status window: the
            # model is degraded until enough good probes follow, then operational.
            seen: list[dict[str, Any]] = []
            try:
                wait_for(lambda: _status(client, seen) == "operational", 180, what="status operational")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last status {seen}") from None
