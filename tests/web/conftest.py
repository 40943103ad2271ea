"""The dashboard is tested through the real app (real Postgres and NATS), like the API."""

from tests.api.conftest import api, persisting_api, settings

__all__ = ["api", "persisting_api", "settings"]
