"""The prober: sends real generations to LLM endpoints on a schedule and publishes telemetry.v1.

Entry point: ``llmscope prober`` / ``python -m llmscope.prober`` (:mod:`llmscope.prober.__main__`);
settings: :mod:`llmscope.prober.settings`; target files: :mod:`llmscope.prober.targets`.
"""
