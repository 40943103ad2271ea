"""Shared runtime configuration: environment settings, secrets, structured logs, health and metrics."""
