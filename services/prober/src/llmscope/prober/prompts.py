"""Probe prompts: a fixed default set of simple, medium and complex prompts with fixed token caps.

Latency depends on the prompt, so each prompt is its own rational subgroup: every telemetry
event names its prompt (``prompt_id``, ``prompt_class`` and the sha256 ``prompt_hash``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Prompt:
    """One probe prompt; ``max_tokens`` caps the answer so its length stays stable."""

    id: str
    prompt_class: str
    text: str
    max_tokens: int
    hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash", hashlib.sha256(self.text.encode()).hexdigest())


DEFAULT_PROMPTS: tuple[Prompt, ...] = (
    Prompt(
        id="simple-capital",
        prompt_class="simple",
        text="What is the capital of France? Answer with one word.",
        max_tokens=16,
    ),
    Prompt(
        id="medium-sky",
        prompt_class="medium",
        text="Explain in three sentences why the sky is blue.",
        max_tokens=96,
    ),
    Prompt(
        id="complex-palindrome",
        prompt_class="complex",
        text=(
            "Write a short Python function that checks whether a string is a palindrome, ignoring "
            "case and punctuation. Then explain its time and memory complexity step by step."
        ),
        max_tokens=256,
    ),
)
