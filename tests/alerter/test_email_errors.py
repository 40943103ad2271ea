"""Permanent SMTP errors fail at once, with a reason to act on: bad credentials (a real aiosmtpd
server refusing the login) and a host name that does not exist; a refused connection is
transient and retried.

The unknown host is one no resolver can look up: 263 characters, over DNS's limit of 253. The C
library answers "no such name" (EAI_NONAME, as for NXDOMAIN) without asking any server, with
glibc and musl alike, so the test does not depend on the machine's DNS. A name such as
``no-such-host.invalid`` would: a machine whose resolver is unreachable answers "temporary
failure" (EAI_AGAIN) instead, which the notifier rightly retries (a DNS outage passes).
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword

from llmscope.alerter.notifiers.email import EmailConfig, EmailNotifier
from llmscope.alerter.retry import Outcome, RetryPolicy, send_with_retry
from llmscope.config.env import Secret
from tests.alerter.factories import Mailbox, smtp_server
from tests.alerter.test_notifiers import notification

QUICK = RetryPolicy(initial=0.01, max_delay=0.02, deadline=2.0, attempt_timeout=2.0, jitter=0.0)


def only(user: str, password: str) -> Any:
    """An aiosmtpd authenticator accepting one login."""

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            user.encode(),
            password.encode(),
        )
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 itself

    return check


def _not_login_data_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Session.login_data is deprecated")


async def _send(cfg: EmailConfig) -> Outcome:
    mail = EmailNotifier("mail", cfg)
    payload = mail.build_payload(notification())

    async def send() -> str:
        return await mail.send(payload)

    return await send_with_retry(send, policy=QUICK, rng=random.Random(1))


async def test_bad_smtp_credentials_fail_at_once_good_ones_send(caplog: pytest.LogCaptureFixture) -> None:
    # The authenticator answers with the current API (AuthResult); aiosmtpd 1.4.6 itself then
    # assigns the deprecated Session.login_data on each successful AUTH and warns about its own
    # assignment (aio-libs/aiosmtpd#347, open). That notice is dropped; restored_logging
    # (tests/conftest.py) puts the logger's filters back after the test.
    logging.getLogger("mail.log").addFilter(_not_login_data_notice)
    box = Mailbox()
    server = smtp_server(box, authenticator=only("alerts", "right"), auth_require_tls=False)
    try:
        cfg = EmailConfig(
            host="127.0.0.1",
            port=server.port,
            security="none",
            sender="scope@example.com",
            recipients=("oncall@example.com",),
            username="alerts",
            password=Secret("wrong"),
        )
        refused = await _send(cfg)
        assert refused.status == "failed"
        assert len(refused.attempts) == 1  # permanent: not retried
        assert refused.attempts[0].detail == "SMTP authentication failed: 535"
        assert box.messages == []
        assert box.quits == 1  # the session ended with QUIT, not a dropped connection
        sent = await _send(replace(cfg, password=Secret("right")))
        assert sent.status == "sent"
        assert len(box.messages) == 1
        assert box.quits == 2
        assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    finally:
        server.stop()


# Labels of 63 characters (each one valid), 263 in all.
UNKNOWN_HOST = ".".join(["no-such-host-" + "x" * 50] * 4) + ".invalid"


async def test_an_unknown_smtp_host_fails_at_once_a_refused_connection_is_retried() -> None:
    assert len(UNKNOWN_HOST) > 253
    assert max(map(len, UNKNOWN_HOST.split("."))) <= 63
    unknown = await _send(
        EmailConfig(
            host=UNKNOWN_HOST,
            port=25,
            security="none",
            sender="scope@example.com",
            recipients=("oncall@example.com",),
        )
    )
    assert unknown.status == "failed"
    assert len(unknown.attempts) == 1
    assert unknown.attempts[0].detail.startswith("unknown SMTP host")
    assert UNKNOWN_HOST[:60] in unknown.attempts[0].detail  # names the host (cut at 160 characters)

    box = Mailbox()
    server = smtp_server(box)
    port = server.port
    server.stop()  # nothing listens there now
    refused = await _send(
        EmailConfig(
            host="127.0.0.1",
            port=port,
            security="none",
            sender="scope@example.com",
            recipients=("oncall@example.com",),
            timeout=1,
        )
    )
    assert refused.status in ("failed", "expired")
    assert len(refused.attempts) > 1  # transient: tried again until the deadline
    assert all("transport error" in a.detail for a in refused.attempts)
