"""The garbage collector's setting for the process that runs the persister."""

from __future__ import annotations

import gc

GC_YOUNGEST_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def tune_gc() -> None:
    """Collect the youngest generation every ``GC_YOUNGEST_THRESHOLD`` allocations, not every 700.

    A batch keeps thousands of young objects alive until its COMMIT (nats-py's messages and their
    header dicts, the decoded events, the rows), so at the default threshold every collection
    walks them again: 3-5 of the drain's 25 us of client CPU per event went to the cyclic GC
    (``bench/ingest_bench.py`` (e); events are freed by reference counting, not by it). Process
    wide, and idempotent: the process that runs the persister sets it at start."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, older, oldest)
