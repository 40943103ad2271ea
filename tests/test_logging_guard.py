"""``restored_logging`` (tests/conftest.py): after a test that sets logging up as a service's
``main()`` does, the next test gets pytest's logging back. The two tests run in this order."""

from __future__ import annotations

import logging

from llmscope.config.logs import setup_logging

_before: dict[str, object] = {}


def _state() -> dict[str, object]:
    root = logging.getLogger()
    return {
        "root level": root.level,
        "root handlers": [type(h) for h in root.handlers],
        "nats level": logging.getLogger("nats").level,
        "asyncpg.pool filters": list(logging.getLogger("asyncpg.pool").filters),
    }


def test_a_service_main_sets_logging_up() -> None:
    _before.update(_state())
    setup_logging("svc")  # as each service's main() does
    root = logging.getLogger()
    assert root.level == logging.INFO
    assert [type(h).__module__ for h in root.handlers] == ["llmscope.config.logs"]


def test_b_the_next_test_gets_pytests_logging_back() -> None:
    assert _before, "runs after test_a_service_main_sets_logging_up"
    assert _state() == _before
    assert any(type(h).__module__ == "_pytest.logging" for h in logging.getLogger().handlers)
