"""Every error answer is in the OpenAPI document, on the operation that gives it, with its body's
schema: the statuses schemathesis cannot reach with the admin key (401, 403, 429) and the ones it
found undocumented (404 of a missing id, 400 of a body that is not UTF-8, 413)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from llmscope.api.settings import ApiSettings
from llmscope.config.env import Secret
from tests.api.conftest import Api, serve

INGEST_KEY = "ingest-key-0123456789abcdef"


@pytest.fixture
async def api_with_ingest(settings: ApiSettings) -> AsyncIterator[Api]:
    small = dataclasses.replace(settings, ingest_key=Secret(INGEST_KEY), max_body_bytes=4096, auth_failures=2)
    async with serve(small) as running:
        yield running


def operation_of(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The operation whose path template matches ``path``."""
    for template, operations in document["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in operations:
            return dict(operations[method.lower()])
    raise AssertionError(f"{method} {path} is not in the document")


def assert_documented(document: dict[str, Any], r: httpx.Response) -> None:
    operation = operation_of(document, r.request.method, r.request.url.path)
    answer = operation["responses"].get(str(r.status_code))
    assert answer is not None, f"{r.request.method} {r.request.url.path}: {r.status_code} not documented"
    schema = answer["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Problem"}
    assert isinstance(r.json()["detail"], str)


async def test_error_answers_are_documented_with_their_body(api_with_ingest: Api) -> None:
    api = api_with_ingest
    document = (await api.anon.get("/openapi.json")).json()
    assert document["components"]["schemas"]["Problem"]["required"] == ["detail"]
    ingest = {"Authorization": f"Bearer {INGEST_KEY}"}

    answers = [
        await api.client.get("/api/violations/nope"),  # 404
        await api.client.put("/api/models/nope/nope", json={"enabled": False}),  # 404
        await api.client.post(  # 400: not UTF-8
            "/api/silences", content=b"{\x80\x81}", headers={"content-type": "application/json"}
        ),
        await api.client.post("/api/stats", content=b"[" + b" " * 5000 + b"]"),  # 413
        await api.anon.get("/api/violations"),  # 401
        await api.client.get("/api/models", headers=ingest),  # 403: the ingest key cannot read
    ]
    assert [r.status_code for r in answers] == [404, 404, 400, 413, 401, 403]
    for r in answers:
        assert_documented(document, r)
    unauthenticated = operation_of(document, "GET", "/api/violations")["responses"]["401"]
    assert "WWW-Authenticate" in unauthenticated["headers"]

    wrong = {"Authorization": "Bearer wrong-key-0123456789abcdef"}
    statuses = [(await api.anon.get("/api/models", headers=wrong)).status_code for _ in range(4)]
    assert statuses[-1] == 429
    limited = await api.anon.get("/api/models", headers=wrong)
    assert_documented(document, limited)


async def test_every_api_operation_documents_auth_and_unavailable(api: Api) -> None:
    document = (await api.anon.get("/openapi.json")).json()
    for path, operations in document["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403", "429", "503"} <= codes, (method, path, codes)
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= codes, (method, path, codes)
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert "503" in document["paths"]["/readyz"]["get"]["responses"]


async def test_each_setting_is_an_operation_with_its_values_schema(api: Api) -> None:
    # One body schema under /api/settings/{key} could not say that a port is an integer and a
    # severity one of three words: schemathesis's schema-valid values were refused (issue 9).
    document = (await api.anon.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]

    def value_schema(key: str) -> dict[str, Any]:
        body = operation_of(document, "PUT", f"/api/settings/{key}")["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        return dict(schemas[ref]["properties"]["value"])

    assert value_schema("alert.email.smtp_port") == {"type": "integer", "minimum": 1, "maximum": 65535}
    assert value_schema("alert.min_severity")["enum"] == ["critical", "info", "warning"]
    assert value_schema("alert.email.enabled") == {"type": "boolean"}
    assert "/api/settings/{key}" not in document["paths"]  # unknown keys: 404, no operation
    r = await api.client.put("/api/settings/alert.email.smtp_port", json={"value": 70000})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "value"]
    assert r.json()["detail"][0]["field"] == "alert.email.smtp_port"
    r = await api.client.put("/api/settings/nope", json={"value": 1})
    assert r.status_code == 404
    assert "alert.email.smtp_port" in r.json()["detail"]


async def test_every_schema_in_the_document_is_valid_json_schema(api: Api) -> None:
    # POST /api/stats's body schema was not valid (issue 9); schemathesis only reports an
    # operation it cannot generate for, so every schema is checked here, with its references.
    document = (await api.anon.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    registry: Registry[Any] = Registry().with_resource(
        "urn:doc", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    found = 0

    def walk(node: object) -> None:
        nonlocal found
        if isinstance(node, dict):
            if isinstance(node.get("schema"), dict):
                Draft202012Validator.check_schema(node["schema"])
                refs = re.findall(r'"\$ref": "#([^"]+)"', json.dumps(node["schema"]))
                for ref in refs:
                    registry.resolver(base_uri="urn:doc").lookup(f"urn:doc#{ref}")
                found += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document["paths"])
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
        found += 1
    stats = operation_of(document, "POST", "/api/stats")["requestBody"]["content"]["application/json"]
    Draft202012Validator.check_schema(stats["schema"])
    assert found > 100
