"""schemathesis against the served OpenAPI document (issue 9: 46 5xx in 14,126 requests).

A real API (real Postgres and nats-server) on a socket, with a real alerter and SPC engine
answering its requests (silences, test sends, re-baselines); the schemathesis CLI reads
``/openapi.json`` from it, sends generated requests, valid and invalid, with the admin key,
and runs every check it has (schemathesis.toml, beside this file): it fails on any 5xx, any
answer the document does not describe, a wrong ``Allow``, an undocumented method answered
other than 405, a schema-invalid request accepted, or a schema-valid one refused (but on the
three operations the configuration names, each with why). Bounded: deterministic generation
and 8 examples per operation, so it runs in three to four minutes on two busy cores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import pytest

from llmscope.api.runner import run_api
from llmscope.api.settings import ApiSettings
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import API_KEY
from tests.api.engine import running_engine

# Every check schemathesis has (`all`): no 5xx, every answer as documented (status code,
# content type, body schema, headers), 405 with the exact Allow for undocumented methods, no
# schema-invalid request accepted, and schema-valid requests accepted except on the operations
# schemathesis.toml (beside this file) names, each with its reason.
CONFIG = Path(__file__).with_name("schemathesis.toml")


# Each of the 78 operations (one per setting among them) in turn: about 3.5 minutes at load 11.
@pytest.mark.timeout(600)
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
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
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
