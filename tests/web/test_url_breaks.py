"""A URL target in a narrow table cell breaks where a reader expects it to (after the scheme,
before a dot or a slash), never mid-word: the Models page cut "api.openai.com" as "api.ope|nai.com"
(the browser check: ``test_browser.py::test_the_models_health_table_fits_a_laptop_and_a_phone``)."""

from __future__ import annotations

import pytest

from llmscope.web.pages import build_environment


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("https://api.openai.com", "https://<wbr>api<wbr>.openai<wbr>.com"),
        (
            "http://gw.local:8443/v1/chat?x=1&y=2",
            "http://<wbr>gw<wbr>.local:<wbr>8443<wbr>/v1<wbr>/chat<wbr>?x<wbr>=1<wbr>&amp;y<wbr>=2",
        ),
        ("empty_response", "empty_<wbr>response"),
        ("local", "local"),
        ("", ""),
        ('a<b>"c', "a&lt;b&gt;&#34;c"),  # escaped like any other text
    ],
)
def test_url_breaks(text: str, html: str) -> None:
    template = build_environment().from_string("{{ t|url_breaks }}")
    assert template.render(t=text) == html
