"""Fixtures of the whole-stack tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The stack's data, not under pytest's basetemp: as root the embedded Postgres runs as an
    unprivileged user, cut off from /tmp/pytest-of-root (mode 0700; see tests/conftest.py)."""
    with tempfile.TemporaryDirectory(prefix="llmscope-e2e-") as tmp:
        yield Path(tmp) / "data"
