"""Constraints shared by request bodies."""

from __future__ import annotations

from pydantic import StringConstraints

NO_NUL = StringConstraints(pattern=r"^[^\x00]*$")
"""Postgres text cannot hold NUL: refused with a 422 naming the field, not a 500 downstream."""
