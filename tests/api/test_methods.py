"""405 with the exact ``Allow`` of a path (issue 9, found by schemathesis with every check)."""

from __future__ import annotations

import re
from typing import Any

from fastapi.routing import iter_route_contexts

from llmscope.api.methods import MethodCheck, wrong_method
from tests.api.conftest import Api


async def test_a_method_no_route_takes_is_405_with_every_method_of_the_path(api: Api) -> None:
    # Starlette named only the first route's methods; TRACE /healthz went to the login (303).
    for method, path, allow in [
        ("OPTIONS", "/api/silences", "GET, POST"),
        ("OPTIONS", "/api/spc/config/ollama/llama3", "DELETE, GET, PUT"),
        ("TRACE", "/healthz", "GET"),
        # a path of its own wins over the chart key template that also matches it
        ("GET", "/api/charts/rebaseline", "POST"),
        ("OPTIONS", "/api/charts/rebaseline", "POST"),
    ]:
        r = await api.client.request(method, path)
        assert (r.status_code, r.headers.get("allow")) == (405, allow), (method, path, r.text)
    # still authentication first under /api: nothing about routes to an anonymous caller
    assert (await api.anon.options("/api/silences")).status_code == 401
    assert (await api.anon.request("TRACE", "/healthz")).status_code == 405
    assert (await api.client.get("/api/charts/a.b.c.d.e")).status_code == 404


async def test_a_number_is_not_a_time_and_a_cursor_is_what_a_page_gave(api: Api) -> None:
    for path in ("/api/violations", "/api/incidents", "/api/notifications"):
        r = await api.client.get(path, params={"since": "0.5"})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "since"]
        r = await api.client.get(path, params={"cursor": "garbage!"})
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "cursor"]
    # (the notifications are the alerter's to answer: not running here)
    for path in ("/api/violations", "/api/incidents"):
        ok = {"since": "2026-01-01T00:00:00Z", "cursor": "1767225600000000~v1"}
        assert (await api.client.get(path, params=ok)).status_code == 200, path


async def test_the_method_table_answers_as_the_walk_over_every_route(api: Api) -> None:
    # MethodCheck's table is a shortcut (issue 13: the walk was half the front door's CPU per
    # POST): for every path of the app, templates filled in, and every method, it must give
    # the walk's answer.
    routes = api.app.router.routes
    check = MethodCheck(routes)
    paths = {"/api/stats", "/healthz", "/api/charts/rebaseline", "/nowhere", "/api/stats/"}
    for route in iter_route_contexts(routes):
        if route.path:
            paths.add(re.sub(r"\{[^}]*\}", "x", route.path))
    shortcuts = 0
    for path in sorted(paths):
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            scope: dict[str, Any] = {
                "type": "http",
                "method": method,
                "path": path,
                "root_path": "",
                "headers": [],
            }
            expected, got = wrong_method(routes, scope), check(scope)
            assert (got is None) == (expected is None), (method, path)
            if expected is not None and got is not None:
                assert (got.status_code, got.headers["allow"]) == (405, expected.headers["allow"])
            shortcuts += method in check._literal.get(path, ())
    assert shortcuts > 50  # the table is in use, not only the walk
