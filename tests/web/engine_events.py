"""Kept for the dashboard tests that import it from here: the helper lives in
``tests/engine_events.py``, shared with the alerter's tests."""

from tests.engine_events import availability_violation, engine_violations, failed

__all__ = ["availability_violation", "engine_violations", "failed"]
