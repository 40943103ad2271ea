"""A simulated LLM endpoint speaking the Ollama, OpenAI and Anthropic APIs, with injectable anomalies.

Run it with ``llmscope sim serve`` (or ``python -m llmscope.simulator serve``); steer it with
``llmscope sim inject ...`` or its HTTP control API (see :mod:`llmscope.simulator.server`).
Environment variables and defaults are listed in :mod:`llmscope.simulator.settings`.
"""
