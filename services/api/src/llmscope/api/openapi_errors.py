"""The error answers of every route, in the OpenAPI document.

Each route documents its own outcomes (a 404 for an id that does not exist, a 409, a 504). What
the front door and the app's exception handlers answer on any route is added here, once, from
what the route is: under ``/api`` or ``/v1`` it needs a key (401, 403, 429) and may find
Postgres or NATS away (503); a route that reads a body may get one that is not JSON (400) or too
large (413). With every answer listed, schemathesis checks status codes and response schemas
against the document, not only the absence of 5xx (issue 9).
"""

from __future__ import annotations

from typing import Any

from llmscope.api.auth import needed_scope

PROBLEM = {
    "title": "Problem",
    "description": "An error answer: what went wrong and, where it helps, what to do.",
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
_PROBLEM_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}
}


def problem(description: str, **extra: Any) -> dict[str, Any]:
    """A documented error answer whose body is a ``Problem``: ``{"detail": "..."}``.

    By reference to a component, not FastAPI's ``model=``: :func:`document_errors` adds these
    to the generated document, where no model is turned into a schema any more."""
    return {"description": description, "content": _PROBLEM_CONTENT, **extra}


def openapi_components() -> dict[str, Any]:
    return {"Problem": PROBLEM}


UNAUTHENTICATED = problem(
    "no key, or not a valid one: send `Authorization: Bearer <key>`",
    headers={"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
)
FORBIDDEN = problem("a valid key of another scope; `detail` names the scope needed and its variable")
TOO_MANY_FAILURES = problem(
    "too many failed authentications from this address (LLMSCOPE_AUTH_FAILURES)", headers=_RETRY_AFTER
)
UNAVAILABLE = problem("Postgres or NATS unavailable, or starting: retry later", headers=_RETRY_AFTER)
MALFORMED_BODY = problem("the body could not be parsed (not UTF-8, not JSON)")
TOO_LARGE = problem("request body over LLMSCOPE_MAX_BODY_BYTES")
INVALID = {
    "description": "a parameter or the body is not valid (a NUL character anywhere, say); `loc` names it",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


def not_found(what: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry of a route that answers 404 when ``what`` does not exist."""
    return {404: problem(f"no such {what}")}


def document_errors(document: dict[str, Any]) -> None:
    """Add the answers every route can give to each operation of an OpenAPI ``document`` (an
    operation's own description of a status wins), and a body to the errors it describes in
    words only: a ``Problem``, or FastAPI's list of errors for a 422."""
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            common: dict[str, dict[str, Any]] = {}
            if needed_scope(method.upper(), path) is not None:
                # 422: the front door refuses a NUL in any query parameter, declared or not.
                common |= {"401": UNAUTHENTICATED, "403": FORBIDDEN, "422": INVALID}
                common |= {"429": TOO_MANY_FAILURES, "503": UNAVAILABLE}
            if "requestBody" in operation:
                common |= {"400": MALFORMED_BODY, "413": TOO_LARGE}
            for code, answer in common.items():
                responses.setdefault(code, answer)
            for parameter in operation.get("parameters", []):
                _no_nul(parameter.get("schema", {}))
            if path.startswith("/v1/"):
                continue  # the OTLP receiver answers in OTLP's own encodings: its bodies are its own
            for code, answer in responses.items():
                if code.isdigit() and int(code) >= 400 and "content" not in answer:
                    answer["content"] = INVALID["content"] if code == "422" else _PROBLEM_CONTENT


def _no_nul(schema: dict[str, Any]) -> None:
    # The front door refuses a NUL in the path or any query parameter (422): say so, or every
    # generated string with one is a "valid request rejected".
    if schema.get("type") == "string" and not {"pattern", "enum", "format"} & schema.keys():
        schema["pattern"] = NO_NUL_PATTERN
    for alternative in schema.get("anyOf", []):
        _no_nul(alternative)


NO_NUL_PATTERN = r"^[^\x00]*$"
