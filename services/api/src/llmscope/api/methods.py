"""405 with an exact ``Allow`` for a method no route takes at a path that exists.

Starlette answers a method mismatch from the first route whose path matches, so a path served
by several routes (``GET`` and ``POST /api/silences``) advertised only the first one's methods
(``Allow: GET`` to an ``OPTIONS``), and a method no route takes outside ``/api`` (``TRACE
/healthz``) reached the dashboard's session check and was redirected to the login page (303)
instead of 405. Found by schemathesis's ``unsupported_method`` and Allow-header checks (issue 9).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def wrong_method(routes: Sequence[BaseRoute], scope: Scope) -> Response | None:
    """405 naming every method the routes take at ``scope``'s path, when they take none of
    the request's; None when a route takes it or no route has that path (404 is the router's)."""
    allowed: set[str] = set()
    literal: set[str] = set()
    served = served_literally = False
    # An included router is one route whose match says nothing of its routes' methods (FastAPI
    # >= 0.137): iter_route_contexts, FastAPI's public walk, gives each route with its prefix.
    for route in iter_route_contexts(routes):
        match, _ = route.matches(scope)
        if match is Match.NONE:
            continue
        is_literal = "{" not in (route.path or "{")
        methods: set[str] = route.methods or set()
        if match is Match.FULL:
            served = True
            served_literally |= is_literal
        allowed |= methods
        if is_literal:
            literal |= methods or {"*"}
    # A path of its own wins over a template that also matches it: /api/charts/rebaseline is
    # the POST of its own operation, not a chart key for GET /api/charts/{chart_key}.
    if served_literally or (served and not literal):
        return None
    allowed = literal or allowed
    if not allowed:
        return None
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(sorted(allowed))}
    )
