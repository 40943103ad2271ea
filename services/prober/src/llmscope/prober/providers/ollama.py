"""Ollama: ``/api/generate`` (default) or ``/api/chat``, NDJSON when streaming.

Durations come from Ollama's own nanosecond fields (converted to ms); tokens/s is
``eval_count / eval_duration``, the generation speed Ollama measured itself. The ``done``
message ends a stream (its ``done_reason`` is the finish reason; Ollama before 0.1.3x sends
none, so ``done`` alone counts as finished); a stream that stops before it with fewer tokens
than asked is ``truncated``.
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
    generation_rate,
    lines,
)
from llmscope.prober.targets import Target


def _ms(ns: Any) -> float | None:
    return ns / 1e6 if isinstance(ns, int | float) and ns >= 0 else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


class OllamaProvider:
    """Probes an Ollama server (or anything speaking its API)."""

    def request(self, target: Target, prompt: Prompt) -> HttpRequest:
        body: dict[str, Any] = {
            "model": target.model,
            "stream": target.streaming,
            "options": {"num_predict": prompt.max_tokens},
        }
        if target.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt.text}]
        else:
            body["prompt"] = prompt.text
        headers = {"Authorization": f"Bearer {target.api_key.get()}"} if target.api_key else {}
        return HttpRequest(url=f"{target.base_url}/api/{target.api}", headers=headers, body=body)

    @staticmethod
    def _piece(data: dict[str, Any]) -> Any:
        message = data.get("message")
        if isinstance(message, dict):
            return message.get("content")
        return data.get("response")

    async def read(
        self, resp: aiohttp.ClientResponse, target: Target, result: ProbeResult, timer: Timer
    ) -> None:
        final: dict[str, Any] | None = None
        if target.streaming:
            async for line in lines(resp):
                if not line.strip():
                    continue
                data = expect_dict(decode_json(line, "an NDJSON line"), "an NDJSON line")
                if "error" in data:
                    raise ProbeFailure("invalid_response", f"error inside the stream: {data['error']}")
                content_token(result, timer, self._piece(data))
                if data.get("done") is True:
                    final = data
                    done_reason = data.get("done_reason")
                    result.finish_reason = done_reason if isinstance(done_reason, str) else "done"
                    break
            if final is None:
                # Each NDJSON line carries one token, so the lines are the token count.
                end_of_stream(result, ended=False, marker="a done message")
                raise ProbeFailure("invalid_response", "the stream ended without a done message")
        else:
            final = expect_dict(decode_json(await resp.read(), "the body"), "the body")
            if "error" in final:
                raise ProbeFailure("invalid_response", f"error in the body: {final['error']}")
            piece = self._piece(final)
            if isinstance(piece, str) and piece:
                result.content.append(piece)
            if final.get("done") is not True:
                raise ProbeFailure("invalid_response", "the answer is not marked done")
        result.total_duration_ms = _ms(final.get("total_duration"))
        result.load_duration_ms = _ms(final.get("load_duration"))
        result.prompt_eval_duration_ms = _ms(final.get("prompt_eval_duration"))
        result.eval_duration_ms = _ms(final.get("eval_duration"))
        result.prompt_eval_count = _count(final.get("prompt_eval_count"))
        result.eval_count = _count(final.get("eval_count"))
        result.tokens_per_s = generation_rate(result.eval_count, result.eval_duration_ms)
