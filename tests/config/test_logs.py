"""Service logging: key=value lines on whatever stderr is current."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from llmscope.config.logs import get_logger, setup_logging


def test_lines_go_to_the_current_stderr_even_after_the_old_one_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        setup_logging("svc")
        get_logger("llmscope.test").info("started", replica=1)
        assert "svc llmscope.test: started replica=1" in first.getvalue()
        first.close()  # as a test harness closes its capture

        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        get_logger("llmscope.test").warning("still here")
        assert "Logging error" not in second.getvalue()
        assert "svc llmscope.test: still here" in second.getvalue()
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
