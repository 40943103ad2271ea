from __future__ import annotations

import pytest

from llmscope.bus.settings import BusSettings
from llmscope.config.env import ConfigError, Env, Secret, redact_url


def test_defaults_apply_when_unset_or_blank() -> None:
    env = Env({"B": "  "})
    assert env.integer("A", 3) == 3
    assert env.text("B", "x") == "x"
    assert env.flag("C", True) is True


@pytest.mark.parametrize(
    ("environ", "call", "message"),
    [
        ({"PORT": "eighty"}, lambda e: e.integer("PORT", 1), "PORT='eighty': expected an integer"),
        ({"PORT": "0"}, lambda e: e.integer("PORT", 1, min=1), "PORT=0: must be >= 1"),
        ({"RATE": "nan"}, lambda e: e.number("RATE", 1.0), "RATE='nan': expected a finite number"),
        ({"ON": "maybe"}, lambda e: e.flag("ON", False), "ON='maybe'"),
        ({"MODE": "x"}, lambda e: e.choice("MODE", "a", ("a", "b")), "MODE='x': expected one of a, b"),
        ({"NATS_URL": "http://x"}, lambda e: BusSettings.from_env(e), "NATS_URL"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], call: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        call(Env(environ))  # type: ignore[operator]
    assert message in str(caught.value)


def test_url_errors_hide_passwords() -> None:
    with pytest.raises(ConfigError) as caught:
        Env({"DATABASE_URL": "mysql://u:hunter2@h/db"}).url("DATABASE_URL", None, schemes=("postgresql",))
    assert "hunter2" not in str(caught.value)


def test_redacted_urls_keep_everything_but_passwords() -> None:
    assert redact_url("nats://llmscope:hunter2@127.0.0.1:4222") == "nats://llmscope:****@127.0.0.1:4222"
    assert (
        redact_url("nats://a:p1@h1:4222,nats://b:p2@h2:4222") == "nats://a:****@h1:4222,nats://b:****@h2:4222"
    )
    assert redact_url("postgresql://postgres@h/db") == "postgresql://postgres@h/db"


def test_secrets_never_show_their_value() -> None:
    secret = Env({"KEY": "s3cret"}).secret("KEY")
    assert secret.get() == "s3cret"
    assert "s3cret" not in repr(secret)
    assert "s3cret" not in f"{secret}"
    assert secret == Secret("s3cret")


def test_bus_settings_from_env() -> None:
    settings = BusSettings.from_env(
        Env({"NATS_URL": "nats://a:4222,nats://b:4222", "LLMSCOPE_STREAM_REPLICAS": "3"})
    )
    assert settings.nats_url == "nats://a:4222,nats://b:4222"
    assert settings.replicas == 3
