"""Whether the charts an injected anomaly disturbs have armed, asked of the LLMscope API.

A chart still collecting its Phase I baseline takes every point into it: an anomaly injected then
is baked into the baseline (wider limits, a shifted center), and the chart will never flag it.
``llmscope sim inject`` still injects (a demo of exactly that is legitimate), but says so first,
naming the charts and how far their baselines are. The check asks ``GET /api/charts`` with a read
key; when the API cannot be asked, the inject goes on with a note saying the check was skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from llmscope.config.env import Env
from llmscope.proto.charts import ChartRecord

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_DATA_DIR = ".llmscope"
"""``llmscope up``'s default LLMSCOPE_DATA_DIR, where it keeps the API key it generated."""


@dataclass(frozen=True, slots=True)
class Collecting:
    """A chart still collecting its baseline: ``progress`` of ``baseline_n`` points."""

    key: str
    progress: int
    baseline_n: int


class CheckSkipped(Exception):
    """The API could not be asked (not running, no key, refused): nothing is known."""


def api_settings(env: Env) -> tuple[str, str | None]:
    """The API's URL (LLMSCOPE_SIM_API_URL) and a key that reads its charts (LLMSCOPE_SIM_API_KEY,
    else LLMSCOPE_READ_KEY, else LLMSCOPE_API_KEY, else the ``api_key`` file ``llmscope up`` keeps
    in LLMSCOPE_DATA_DIR). Reads a file: call it off the event loop."""
    url = env.url("LLMSCOPE_SIM_API_URL", DEFAULT_API_URL, schemes=("http", "https")) or DEFAULT_API_URL
    key = env.raw("LLMSCOPE_SIM_API_KEY") or env.raw("LLMSCOPE_READ_KEY") or env.raw("LLMSCOPE_API_KEY")
    return url.rstrip("/"), key or _data_dir_key(env)


def _data_dir_key(env: Env) -> str | None:
    """The API key ``llmscope up`` generated into its data directory (same default, ``./.llmscope``),
    or None: only read here, never created (that is ``llmscope up``'s)."""
    path = Path(env.text("LLMSCOPE_DATA_DIR", DEFAULT_DATA_DIR)).expanduser() / "api_key"
    try:
        return path.read_text().strip() or None
    except OSError:  # no such file (no `llmscope up` there yet), or not ours to read
        return None


def collecting(records: Sequence[ChartRecord], *, model: str | None, host: str | None) -> list[Collecting]:
    """The charts of ``model`` (or on ``host``; neither: all) still collecting their baseline."""
    out = []
    for r in records:
        if (model is not None and r.meta.model != model) or (host is not None and r.meta.host != host):
            continue
        view: Any = r.view or r.availability
        if view is not None and view.phase == "collecting":
            out.append(Collecting(r.key, int(view.progress), int(view.baseline_n)))
    return sorted(out, key=lambda c: c.key)


async def charts_collecting(
    url: str, key: str | None, *, model: str | None, host: str | None, wait_s: float = 5.0
) -> list[Collecting]:
    """Ask the API; raises CheckSkipped when it cannot tell."""
    if not key:
        raise CheckSkipped(
            "no key to read the API's charts (none in LLMSCOPE_DATA_DIR/api_key: point"
            " LLMSCOPE_DATA_DIR at `llmscope up`'s data directory, or set LLMSCOPE_SIM_API_KEY)"
        )
    params = {"model": model} if model is not None else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s)) as session,
            session.get(
                f"{url}/api/charts", params=params, headers={"Authorization": f"Bearer {key}"}
            ) as resp,
        ):
            body = await resp.read()
            if resp.status != 200:
                raise CheckSkipped(f"{url}/api/charts answered {resp.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CheckSkipped(f"cannot reach the API at {url}: {exc!r}") from exc
    try:
        records = msgspec.json.decode(body, type=list[ChartRecord])
    except msgspec.DecodeError as exc:
        raise CheckSkipped(f"unexpected answer from {url}/api/charts: {exc}") from exc
    return collecting(records, model=model, host=host)


def warning(charts: Sequence[Collecting], what: str, shown: int = 6) -> str:
    """What ``sim inject`` prints before injecting into charts still collecting."""
    listed = ", ".join(f"{c.key} {c.progress}/{c.baseline_n}" for c in charts[:shown])
    more = f" and {len(charts) - shown} more" if len(charts) > shown else ""
    return (
        f"warning: {len(charts)} chart(s) of {what} are still collecting their baseline"
        f" ({listed}{more}): this anomaly goes into their baseline and they will not flag it."
        " Wait until they are armed (the Charts page, or GET /api/charts), or re-baseline them"
        " once the anomaly has ended (llmscope spc rebaseline, or the chart's Re-baseline button)."
    )
