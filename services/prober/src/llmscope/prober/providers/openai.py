"""OpenAI chat completions (``{base_url}/chat/completions``; base_url includes ``/v1``).

Streaming asks for ``stream_options.include_usage`` so the last chunk carries the token counts;
without it the content chunks are counted. The role-only first chunk (``content: ""``) does not
count as the first token. A stream that ends (``[DONE]`` or a closed connection) with no
``finish_reason`` and fewer tokens than asked is ``truncated``.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from llmscope.prober.prompts import Prompt
from llmscope.prober.providers.base import (
    HttpRequest,
    ProbeFailure,
    ProbeResult,
    Timer,
    content_token,
    decode_json,
    end_of_stream,
    expect_dict,
    sse_events,
)
from llmscope.prober.targets import Target


def _usage(result: ProbeResult, usage: Any) -> None:
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            result.prompt_eval_count = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            result.eval_count = usage["completion_tokens"]


def _first_choice(data: dict[str, Any]) -> dict[str, Any] | None:
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ProbeFailure("invalid_response", "no 'choices' in the answer")
    return choices[0] if choices and isinstance(choices[0], dict) else None


class OpenAIProvider:
    """Probes an OpenAI-compatible chat completions endpoint."""

    def request(self, target: Target, prompt: Prompt) -> HttpRequest:
        body: dict[str, Any] = {
            "model": target.model,
            "messages": [{"role": "user", "content": prompt.text}],
            "max_tokens": prompt.max_tokens,
            "stream": target.streaming,
        }
        if target.streaming:
            body["stream_options"] = {"include_usage": True}
        headers = {"Authorization": f"Bearer {target.api_key.get()}"} if target.api_key else {}
        return HttpRequest(url=f"{target.base_url}/chat/completions", headers=headers, body=body)

    async def read(
        self, resp: aiohttp.ClientResponse, target: Target, result: ProbeResult, timer: Timer
    ) -> None:
        if not target.streaming:
            data = expect_dict(decode_json(await resp.read(), "the body"), "the body")
            choice = _first_choice(data)
            message = choice.get("message") if choice else None
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and content:
                result.content.append(content)
            _usage(result, data.get("usage"))
            return
        chunks = events = 0
        done = False
        async for _, payload in sse_events(resp):
            events += 1
            if payload.strip() == "[DONE]":
                done = True
                break
            data = expect_dict(decode_json(payload, "an SSE chunk"), "an SSE chunk")
            if "error" in data:
                raise ProbeFailure("invalid_response", f"error inside the stream: {data['error']}")
            _usage(result, data.get("usage"))
            choice = _first_choice(data)
            delta = choice.get("delta") if choice else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str) and delta["content"]:
                content_token(result, timer, delta["content"])
                chunks += 1
            if choice and isinstance(choice.get("finish_reason"), str):
                result.finish_reason = choice["finish_reason"]
        if not events:
            # Not a stream cut short but no stream at all (an HTML error page, say).
            raise ProbeFailure("invalid_response", "the answer carries no server-sent events")
        if result.eval_count is None and chunks:
            result.eval_count = chunks
        end_of_stream(result, ended=done, marker="[DONE]")
