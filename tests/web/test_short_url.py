"""A target's URL in a table cell is shortened to its host and a shortened path, with the whole
URL in its ``title`` and in the page (the parts cut in text of no size, so a copy copies it all):
a gateway's URL took nine lines of the Models page's health table (the browser check:
``test_browser.py::test_the_models_health_table_fits_a_laptop_and_a_phone``)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from llmscope.web.pages import build_environment
from llmscope.web.short_url import url_pieces
from llmscope.web.userinfo import hidden, release_fingerprint_key, use_fingerprint_key

GATEWAY = "https://llm-gateway.inference.internal.example.com:8443/v1/openai"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (GATEWAY, "llm-gateway…:8443/v1/openai"),
        ("https://api.openai.com", "api.openai.com"),
        ("http://localhost:11434", "localhost:11434"),
        ("http://gw.local:8443/v1/chat?x=1&y=2", "gw.local:8443/v1/chat?x=1&y=2"),
        ("http://10.0.12.34:8000/v1/chat/completions", "10.0.12.34:8000/…/completions"),
        (
            "https://bot:s3cret@my-company-llm-router.prod.eu-west-1.internal.corp/v1/chat/completions"
            "?api-version=2024-06-01",
            "my-company-llm-router…/…/completions?…",
        ),
        ("https://abcdefghijklmnopqrstuvwxyzabcdefghijklmnop.com/", "abcdefghijklmnopqrst…/"),
        (
            "https://my-resource.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=1",
            "my-resource.openai.azure.com/…/completions?…",
        ),
        ("http://a.b/" + "x" * 40, "a.b/xxxxxxxxxxxxxxxx…"),
        # An IPv6 literal's colons are not its port's: a long one keeps its port.
        ("http://[2001:db8::1]:8443/v1/chat/completions", "[2001:db8::1]:8443/…/completions"),
        (
            "http://[2001:db8:1234:5678:9abc:def0:1234:5678]:8443/v1/chat/completions",
            "[2001:db8:1234:…]:8443/…/completions",
        ),
        ("http://[2001:db8:1234:5678:9abc:def0:1234:5678]/v1", "[2001:db8:1234:…]/v1"),
        ("local", "local"),
    ],
)
def test_a_url_is_shortened_and_its_pieces_join_to_it_again(url: str, shown: str) -> None:
    pieces = url_pieces(url)
    assert "".join(text for text, _ in pieces) == url
    assert "".join("…" if kind == "more" else text for text, kind in pieces if kind != "cut") == shown


def test_the_cell_holds_the_whole_url_with_breaks_in_what_it_shows() -> None:
    template = build_environment().from_string("<td>{{ t|short_url }}</td>")
    html = template.render(t=GATEWAY)
    assert html == (
        f'<td><span class="url" title="{GATEWAY}"><span class="url-cut">https://</span>'
        '<span class="url-name">llm-gateway</span><span class="url-more" aria-hidden="true"></span><wbr>'
        '<span class="url-cut">.inference.internal.example.com</span><span class="url-name">:8443</span>'
        "/v1<wbr>/openai</span></td>"
    )
    assert re.sub(r"<[^>]+>", "", html) == GATEWAY  # its text is the URL: what a copy copies
    assert template.render(t="") == "<td></td>"  # stays :empty
    assert 'title="a&lt;b&gt;&#34;c"' in template.render(t='a<b>"c')
    assert "&lt;script&gt;" in template.render(t="https://x.example.com/<script>/aaaaaaaaaaaaaaaaaaaaaaaaa")


@pytest.fixture(params=[None, bytes(range(32))], ids=["no key", "installation key"])
def fingerprint_key(request: pytest.FixtureRequest) -> Iterator[bytes | None]:
    """Printed with no key (``•••`` alone) and under an installation's key (``•••`` and 4 hex)."""
    key: bytes | None = request.param
    use_fingerprint_key(key)
    try:
        yield key
    finally:
        release_fingerprint_key(key)


@pytest.mark.usefixtures("fingerprint_key")
def test_a_password_is_never_in_the_cell_its_title_or_what_a_copy_copies() -> None:
    template = build_environment().from_string("<td>{{ t|short_url }}</td>")
    html = template.render(t="https://user:secret@gateway.example.internal.corp/v1/chat/completions")
    assert "secret" not in html
    shown = f"https://user:{hidden('secret')}@gateway.example.internal.corp/v1/chat/completions"
    assert f'title="{shown}"' in html
    assert re.sub(r"<[^>]+>", "", html) == shown


def test_a_long_host_name_breaks_after_a_hyphen_only() -> None:
    """As one run, "my-company-llm-router" was wider than the Models page's target column and ran
    on under the next one: runs of at most 14 characters, split after hyphens."""
    template = build_environment().from_string("{{ t|short_url }}")
    html = template.render(t="https://my-company-llm-router.prod.eu-west-1.internal.corp/v1")
    assert '<span class="url-name">my-company-</span><wbr><span class="url-name">llm-router</span>' in html
    assert '<span class="url-name">llm-gateway</span>' in template.render(t=GATEWAY)  # short: one run


def _unbreakable(html: str) -> list[str]:
    """What a cell shows of ``html`` in the pieces no line break can split: the cut parts take no
    room; a line breaks at ``<wbr>`` and after a hyphen outside a ``url-name`` (kept on one line)."""
    html = re.sub(r'<span class="url-cut">.*?</span>', "", html)
    pieces = []
    for piece in re.split(r"<wbr>", html):
        names = re.findall(r'<span class="url-name">([^<]*)</span>', piece)
        rest = re.sub(r"<[^>]+>", " ", re.sub(r'<span class="url-name">[^<]*</span>', " ", piece))
        pieces += names + [w for w in re.split(r"(?<=-)|\s", rest) if w]
    return pieces


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # A first label of 22 characters with no hyphen was one run, wider than the Models page's
        # target column at 1366 and 390 px (test_browser_targets).
        ("https://inferenceclusterprod01.example.com/v1", ["inferencecl", "usterprod01", "/v1"]),
        ("https://abcdefghijklmnopqrstuvwxyzabcdefghijklmnop.com/", ["abcdefghij", "klmnopqrst", "/"]),
        ("https://gpu-inferenceclusterprod01.example.com/v1", ["gpu-", "inferenc", "ecluster", "/v1"]),
        # Shown whole (short), with no dot to break at for 22 characters.
        ("https://inferenceclusterprod01.ai/v1", ["inferencecl", "usterprod01", ".ai", "/v1"]),
        ("https://abcdefghijklmnopq.example.com/v1", ["abcdefghi", "jklmnopq", ".example", ".com", "/v1"]),
    ],
)
def test_a_long_host_name_without_hyphens_breaks_in_even_runs(url: str, shown: list[str]) -> None:
    html = build_environment().from_string("{{ t|short_url }}").render(t=url)
    assert _unbreakable(html) == shown, html
    assert re.sub(r"<[^>]+>", "", html) == url  # still the whole URL, for a copy


@pytest.mark.usefixtures("fingerprint_key")
def test_a_key_in_the_query_is_never_in_the_cell_its_title_or_what_a_copy_copies() -> None:
    template = build_environment().from_string("<td>{{ t|short_url }}</td>")
    html = template.render(t="https://gw.example.internal.corp/openai/v1/chat?api-key=s3cret&x=1")
    assert "s3cret" not in html
    shown = f"https://gw.example.internal.corp/openai/v1/chat?api-key={hidden('s3cret')}&x=1"
    assert f'title="{shown.replace("&", "&amp;")}"' in html
    assert re.sub(r"<[^>]+>", "", html).replace("&amp;", "&") == shown
