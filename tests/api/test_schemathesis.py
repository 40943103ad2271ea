"""schemathesis against the served OpenAPI document (issue 9: 46 5xx in 14,126 requests).

A real API (real Postgres and nats-server) on a socket, with a real alerter and SPC engine
answering its requests (silences, test sends, re-baselines); the schemathesis CLI reads
``/openapi.json`` from it, sends generated requests, valid and invalid, with the admin key,
and fails on any 5xx and on any answer the document does not describe. Bounded: a fixed seed,
deterministic generation and a few examples per operation, so it runs in about a minute.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import API_KEY
from tests.api.engine import running_engine

# No 5xx, as the issue asks, and every answer as documented: its status code, its content type
# and its body's schema (the 404s of missing ids, 400/413/422 of bad bodies, 503, ...: see
# llmscope.api.openapi_errors). Not checked: whether the API's validation is exactly the
# schema's (schemathesis's positive/negative data checks find constraints the document does
# not state, and requests the API accepts more loosely than it says, e.g. a number as `since`).
CHECKS_OLD = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


CHECKS = "all"
EXCLUDED = "positive_data_acceptance"


async def test_no_5xx_and_every_answer_as_documented(
    settings: ApiSettings, database_url: str, nats_url: str, tmp_path: Path
) -> None:
    served = dataclasses.replace(settings, host="127.0.0.1", port=0)
    st = Path(sys.executable).with_name("st")
    async with (
        run_api(served) as url,
        live_alerter(database_url, nats_url, None),
        running_engine(nats_url),
    ):
        proc = await asyncio.create_subprocess_exec(
            str(st),
            "run",
            f"{url}/openapi.json",
            "--checks",
            CHECKS,
            "--exclude-checks",
            EXCLUDED,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "8",
            "--seed",
            "20261206",
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--no-color",
            "--report-dir",
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await proc.communicate()
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-20000:]
