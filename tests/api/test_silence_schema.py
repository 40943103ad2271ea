"""The silence body's document states the alerter's window rules where JSON Schema can (issue 9):
never narrower than what the alerter takes, or a schema-invalid request would be accepted."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import pytest

from llmscope.alerter.silences import parse_days, parse_nth_weekdays
from llmscope.api.routes.silences import SilenceBody

SCHEMA = SilenceBody.model_json_schema()["properties"]


def _taken(parse: Callable[[Iterable[str]], object], text: str) -> bool:
    try:
        parse([text])
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "text", ["mon", "Monday", " FRİ", "fri", "fr", "x mon", "sunny", "MON day", "\tWed", "", "tues"]
)
def test_a_weekday_is_valid_in_the_document_exactly_when_the_alerter_takes_it(text: str) -> None:
    pattern = SCHEMA["weekly_days"]["items"]["pattern"]
    assert bool(re.search(pattern, text)) == _taken(parse_days, text)


@pytest.mark.parametrize(
    "text",
    [
        "first sun",
        "Last Friday",
        " second  tue ",
        "fifth sun",
        "first",
        "first sun x",
        "FİRST sun",
        "first FRİ",
    ],
)
def test_an_nth_weekday_is_valid_in_the_document_exactly_when_the_alerter_takes_it(text: str) -> None:
    pattern = SCHEMA["monthly_weekdays"]["items"]["pattern"]
    assert bool(re.search(pattern, text)) == _taken(parse_nth_weekdays, text)


def test_days_of_the_month_and_blank_names_are_stated() -> None:
    assert SCHEMA["monthly_days"]["items"] == {"type": "integer", "minimum": 1, "maximum": 31}
    for field in ("reason", "author"):
        pattern = SCHEMA[field]["pattern"]
        assert re.search(pattern, " ops ")
        assert not re.search(pattern, " \t\n")
