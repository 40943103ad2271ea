"""Constraints shared by request bodies and query parameters."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query
from pydantic import BeforeValidator, StringConstraints

from llmscope.api.cursors import CURSOR_PATTERN

NO_NUL = StringConstraints(pattern=r"^[^\x00]*$")
"""Postgres text cannot hold NUL: refused with a 422 naming the field, not a 500 downstream."""


def _iso_only(value: object) -> object:
    # pydantic reads a number as a Unix time ("since=0.5" was accepted), which the document's
    # `format: date-time` does not allow: only ISO 8601 text is a time here (issue 9).
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time, e.g. 2026-01-31T12:00:00Z")
    return value


Instant = Annotated[datetime, BeforeValidator(_iso_only)]
"""A time in a query: ISO 8601 only, as documented."""

Cursor = Annotated[
    str | None,
    Query(pattern=CURSOR_PATTERN, description="a page's `next_cursor`, passed back as it was given"),
]
