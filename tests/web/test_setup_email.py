"""The setup wizard completes an email setup end to end: the form is posted to ``/setup``, the
test message is asked of ``/setup/test``, and a real alerter sends it to a local aiosmtpd server,
plain (security none) or STARTTLS with a self-signed certificate generated here."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from tests.alerter.factories import Mailbox, smtp_server
from tests.api.alerting_harness import live_alerter
from tests.api.conftest import Api
from tests.web.test_pages import login


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 signed by itself, and the server's context holding it."""
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    command = (
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
        " -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
    )
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


async def _wizard(api: Api, form: dict[str, str]) -> str:
    """Post the wizard's form as a browser would, then its email test; the test's answer."""
    client = await login(api)
    page = await client.get("/setup")
    assert page.status_code == 200
    for field in form:
        assert f'name="{field}"' in page.text, field  # every field the test fills is on the form
    r = await client.post("/setup", data={**form, "by": "ann"})
    assert r.status_code == 200, r.text
    assert "Saved" in r.text
    assert "Channels on: email" in r.text
    r = await client.post("/setup/test", data={"channel": "email"})
    assert r.status_code == 200, r.text
    return r.text


def _form(port: int, security: str, **extra: str) -> dict[str, str]:
    return {
        "alert.email.smtp_host": "127.0.0.1",
        "alert.email.smtp_port": str(port),
        "alert.email.tls": security,
        "alert.email.recipients": "ops@example.com",
        "alert.email.from_addr": "scope@example.com",
        **extra,
    }


async def test_wizard_email_setup_with_a_plain_local_smtp_server(
    api: Api, database_url: str, nats_url: str
) -> None:
    box = Mailbox()
    smtp = smtp_server(box)
    try:
        async with live_alerter(database_url, nats_url, None):
            answer = await _wizard(api, _form(smtp.port, "none"))
    finally:
        smtp.stop()
    assert "email (email): sent" in answer
    assert box.envelopes == [["ops@example.com"]]
    assert box.messages[0]["From"] == "scope@example.com"


@pytest.mark.parametrize(
    ("extra", "trusted"),
    [
        pytest.param({"alert.email.ca_file": "CERT"}, True, id="its certificate as the CA file"),
        pytest.param({"alert.email.verify_cert": "false"}, True, id="verification off"),
        pytest.param({}, False, id="verified against the system's CAs: refused"),
    ],
)
async def test_wizard_email_setup_with_a_starttls_server_and_a_self_signed_certificate(
    api: Api,
    database_url: str,
    nats_url: str,
    self_signed: tuple[Path, ssl.SSLContext],
    extra: dict[str, str],
    trusted: bool,
) -> None:
    cert, context = self_signed
    extra = {k: str(cert) if v == "CERT" else v for k, v in extra.items()}
    box = Mailbox()
    smtp = smtp_server(box, tls_context=context, require_starttls=True)
    try:
        async with live_alerter(database_url, nats_url, None):
            answer = await _wizard(api, _form(smtp.port, "starttls", **extra))
    finally:
        smtp.stop()
    if trusted:
        assert "email (email): sent" in answer
        assert box.envelopes == [["ops@example.com"]]
    else:
        # A certificate nobody vouches for is a configuration error: said at once, not retried.
        assert "email (email): failed" in answer
        assert "after 1 attempt<" in answer
        assert "certificate verify failed" in answer
        assert box.envelopes == []
