"""Anthropic messages (``{base_url}/v1/messages``), streaming SSE events or one JSON answer.

The first ``content_block_delta`` with non-empty text is the first token (``message_start`` and
``ping`` come earlier). Output tokens come from ``message_delta.usage``. An ``overloaded_error``
(HTTP 529, or an ``error`` event inside the stream) is ``overloaded``. A stream that ends
(``message_stop`` or a closed connection) with no ``stop_reason`` in a ``message_delta`` and
fewer tokens than asked is ``truncated``.
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
from llmscope.proto.telemetry import ProbeStatus

API_VERSION = "2023-06-01"


def _usage(result: ProbeResult, usage: Any) -> None:
    if isinstance(usage, dict):
        if isinstance(usage.get("input_tokens"), int):
            result.prompt_eval_count = usage["input_tokens"]
        if isinstance(usage.get("output_tokens"), int):
            result.eval_count = usage["output_tokens"]


class AnthropicProvider:
    """Probes the Anthropic messages API."""

    def request(self, target: Target, prompt: Prompt) -> HttpRequest:
        headers = {"anthropic-version": API_VERSION}
        if target.api_key:
            headers["x-api-key"] = target.api_key.get()
        body = {
            "model": target.model,
            "max_tokens": prompt.max_tokens,
            "messages": [{"role": "user", "content": prompt.text}],
            "stream": target.streaming,
        }
        return HttpRequest(url=f"{target.base_url}/v1/messages", headers=headers, body=body)

    async def read(
        self, resp: aiohttp.ClientResponse, target: Target, result: ProbeResult, timer: Timer
    ) -> None:
        if not target.streaming:
            data = expect_dict(decode_json(await resp.read(), "the body"), "the body")
            if data.get("type") != "message":
                raise ProbeFailure("invalid_response", f"expected a message, got type {data.get('type')!r}")
            blocks = data.get("content")
            for block in blocks if isinstance(blocks, list) else []:
                if isinstance(block, dict) and block.get("type") == "text" and block.get("text"):
                    result.content.append(str(block["text"]))
            _usage(result, data.get("usage"))
            return
        stopped = False
        events = 0
        async for event, payload in sse_events(resp):
            events += 1
            data = expect_dict(decode_json(payload, f"the {event} event"), f"the {event} event")
            kind = data.get("type", event)
            if kind == "message_start":
                message = data.get("message")
                _usage(result, message.get("usage") if isinstance(message, dict) else None)
                result.eval_count = None  # message_start's output_tokens is a placeholder
            elif kind == "content_block_delta":
                delta = data.get("delta")
                if isinstance(delta, dict) and delta.get("type") == "text_delta":
                    content_token(result, timer, delta.get("text"))
            elif kind == "message_delta":
                _usage(result, data.get("usage"))
                delta = data.get("delta")
                if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                    result.finish_reason = delta["stop_reason"]
            elif kind == "message_stop":
                stopped = True
                break
            elif kind == "error":
                error = data.get("error")
                error_type = error.get("type") if isinstance(error, dict) else None
                status: ProbeStatus = "overloaded" if error_type == "overloaded_error" else "invalid_response"
                raise ProbeFailure(status, f"error inside the stream: {error}")
        if not events:
            # Not a stream cut short but no stream at all (an HTML error page, say).
            raise ProbeFailure("invalid_response", "the answer carries no server-sent events")
        end_of_stream(result, ended=stopped, marker="message_stop")
