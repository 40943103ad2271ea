"""One module per LLM API; each turns one probe into a :class:`ProbeResult` and never raises."""

from __future__ import annotations

from llmscope.prober.providers.anthropic import AnthropicProvider
from llmscope.prober.providers.base import ProbeResult, Provider, probe
from llmscope.prober.providers.ollama import OllamaProvider
from llmscope.prober.providers.openai import OpenAIProvider

PROVIDERS: dict[str, Provider] = {
    "ollama": OllamaProvider(),
    "openai": OpenAIProvider(),
    "anthropic": AnthropicProvider(),
}

__all__ = ["PROVIDERS", "ProbeResult", "Provider", "probe"]
