"""405 with an exact ``Allow`` for a method no route takes at a path that exists.

Starlette answers a method mismatch from the first route whose path matches, so a path served
by several routes (``GET`` and ``POST /api/silences``) advertised only the first one's methods
(``Allow: GET`` to an ``OPTIONS``), and a method no route takes outside ``/api`` (``TRACE
/healthz``) reached the dashboard's session check and was redirected to the login page (303)
instead of 405. Found by schemathesis's ``unsupported_method`` and Allow-header checks (issue 9).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import APIRoute, iter_route_contexts
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


class MethodCheck:
    """:func:`wrong_method` with a shortcut for the common case: a route of that exact path
    takes the method. Walking every route on every request (about 130 of them) was half of
    the front door's cost on ``POST /api/stats`` (issue 13's profile: 0.7 of 1.5 ms)."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = routes
        self._literal: dict[str, frozenset[str]] = {}
        self._built_for = -1

    def _build(self) -> None:
        # Only FastAPI's own routes, whose match is the path's regex then the method: a literal
        # path that its own regex matches is served when the method is one of the route's.
        table: dict[str, set[str]] = {}
        for route in iter_route_contexts(self.routes):
            path, methods = route.path, route.methods
            if not isinstance(route.original_route, APIRoute) or not path or "{" in path or not methods:
                continue
            if route.path_regex.match(path) is None:
                continue
            table.setdefault(path, set()).update(methods)
        self._literal = {path: frozenset(methods) for path, methods in table.items()}
        self._built_for = len(self.routes)

    def __call__(self, scope: Scope) -> Response | None:
        if self._built_for != len(self.routes):
            self._build()  # once: the routes are all in place by the first request
        # Behind a root path the router matches a shortened path: the general walk handles it.
        if not scope.get("root_path") and scope["method"] in self._literal.get(scope["path"], ()):
            return None
        return wrong_method(self.routes, scope)
