"""The optional LLM-written analysis: an OpenAI-compatible or Ollama chat endpoint.

Never raises and never blocks delivery: an unreachable, slow or nonsensical endpoint gives a
result whose ``status`` says so, and the deterministic summary stands alone.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from llmscope.config.env import Secret
from llmscope.proto.incident import LlmStatus

LlmKind = Literal["openai", "ollama"]

SYSTEM_PROMPT = (
    "You are an SRE assistant for LLM inference endpoints. From the incident facts, answer with "
    'one JSON object with the keys "hypothesis" (the most likely root cause, 2-4 sentences), '
    '"engineering_email" (a short alert email to the on-call engineers) and "customer_notice" '
    "(one or two plain sentences for customers, or null when not asked for). JSON only."
)


@dataclass(frozen=True, slots=True)
class LlmConfig:
    url: str
    model: str
    kind: LlmKind = "openai"
    timeout: float = 30.0
    api_key: Secret = field(default_factory=lambda: Secret(""))


@dataclass(frozen=True, slots=True)
class LlmResult:
    status: LlmStatus
    error: str | None = None
    hypothesis: str | None = None
    engineering_email: str | None = None
    customer_notice: str | None = None


def build_messages(title: str, summary: str, *, critical: bool) -> list[dict[str, str]]:
    ask = "Also write the customer_notice." if critical else "Set customer_notice to null."
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Incident: {title}\n\nFacts:\n{summary}\n\n{ask}"},
    ]


def _clean(value: Any, limit: int) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:limit]


def _looks_like_text(text: str) -> bool:
    """Enough words and mostly letters: prose, not an HTML error page or binary noise."""
    if "<html" in text.lower() or len(text.split()) < 5:
        return False
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    return letters / max(1, len(text)) >= 0.7


def parse_answer(content: str, *, critical: bool) -> LlmResult:
    """The model's text as a result: the JSON asked for, or usable prose, else ``invalid``."""
    text = content.strip()
    if not text:
        return LlmResult("invalid", "empty answer")
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
        except ValueError:
            data = None
        if isinstance(data, dict) and _clean(data.get("hypothesis"), 4000):
            return LlmResult(
                "ok",
                hypothesis=_clean(data.get("hypothesis"), 4000),
                engineering_email=_clean(data.get("engineering_email"), 8000),
                customer_notice=_clean(data.get("customer_notice"), 2000) if critical else None,
            )
    # Small local models often ignore the format; readable prose is still a usable hypothesis.
    if _looks_like_text(text):
        return LlmResult("ok", hypothesis=text[:4000])
    return LlmResult("invalid", f"unusable answer: {text[:120]!r}")


def _endpoint(cfg: LlmConfig) -> str:
    base = cfg.url.rstrip("/")
    if cfg.kind == "ollama":
        return f"{base}/api/chat"
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def _content(kind: LlmKind, data: Any) -> str:
    if kind == "ollama":
        return str(data["message"]["content"])
    return str(data["choices"][0]["message"]["content"])


async def analyze(
    session: aiohttp.ClientSession, cfg: LlmConfig, title: str, summary: str, *, critical: bool
) -> LlmResult:
    messages = build_messages(title, summary, critical=critical)
    body: dict[str, Any] = {"model": cfg.model, "messages": messages, "stream": False}
    if cfg.kind == "ollama":
        body["options"] = {"temperature": 0}
    else:
        body["temperature"] = 0
    headers = {"Authorization": f"Bearer {cfg.api_key.get()}"} if cfg.api_key else {}
    try:
        async with asyncio.timeout(cfg.timeout):
            async with session.post(
                _endpoint(cfg), json=body, headers=headers, allow_redirects=False
            ) as resp:
                raw = await resp.text(errors="replace")
                if resp.status >= 300:  # a redirect is not followed (outbound policy)
                    return LlmResult("unreachable", f"HTTP {resp.status}: {raw[:200]}")
    except TimeoutError:
        return LlmResult("timeout", f"no answer within {cfg.timeout:.0f} s")
    except (aiohttp.ClientError, OSError) as exc:
        return LlmResult("unreachable", repr(exc)[:300])
    try:
        content = _content(cfg.kind, json.loads(raw))
    except (ValueError, KeyError, IndexError, TypeError):
        return LlmResult("invalid", f"not a {cfg.kind} chat answer: {raw[:120]!r}")
    return parse_answer(content, critical=critical)
