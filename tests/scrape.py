"""Read a service's /metrics as Prometheus would: parsed, so a test names series and labels."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["Sample", "parse", "scrape", "total", "values"]


async def scrape(session: aiohttp.ClientSession, url: str) -> list[Sample]:
    """Every sample of the exposition at ``url`` (raises on a non-200 answer or a bad format)."""
    async with session.get(url) as resp:
        assert resp.status == 200, resp.status
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    return parse(text)


def parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def values(samples: list[Sample], name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``."""
    return [
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(values(samples, name, **labels))
