"""The ``llmscope`` command: one entry point per service, and ``up`` for the whole local stack."""
