"""Kept for the dashboard tests that import it from here: the helpers live in
``tests/engine_events.py``, shared with the alerter's tests."""

from __future__ import annotations

from tests.engine_events import (
    availability_violation,
    engine_violations,
    error_rate_violation,
    failed,
    store_seen,
)

__all__ = ["availability_violation", "engine_violations", "error_rate_violation", "failed", "store_seen"]
