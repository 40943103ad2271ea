"""The setup wizard stores what was typed, never the defaults it shows filled in: saved back,
a default would pin itself over the environment (the tracker's "none" turns the alerter's
``LLMSCOPE_TICKETS_*`` tracker off) and the answer would list fields nobody changed."""

from __future__ import annotations

from html.parser import HTMLParser

from tests.api.conftest import Api
from tests.web.test_pages import login


class _WizardForm(HTMLParser):
    """The fields of the page's ``/setup`` form as a browser submits them."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self._in_form = False
        self._select: str | None = None
        self._option: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._in_form = a.get("hx-post") == "/setup"
        elif tag == "option" and self._select is not None:
            self._option, self._text = a, ""
        elif self._in_form and a.get("name"):
            name = a["name"] or ""
            if tag == "input":
                self.fields[name] = a.get("value") or ""
            elif tag == "select":
                self._select = name

    def handle_data(self, data: str) -> None:
        if self._option is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "option" and self._select is not None and self._option is not None:
            value = self._option.get("value") or self._text.strip()
            # A select posts its selected option, else its first.
            if "selected" in self._option or self._select not in self.fields:
                self.fields[self._select] = value
            self._option = None
        elif tag == "select":
            self._select = None


async def test_saving_the_wizard_stores_only_the_fields_changed(api: Api) -> None:
    client = await login(api)
    page = await client.get("/setup")
    parser = _WizardForm()
    parser.feed(page.text)
    form = parser.fields
    # The defaults are on the page, filled in: a browser posts them back with the one field typed.
    assert form["alert.tickets.tracker"] == "none"
    assert form["alert.email.smtp_port"] == "587"
    assert form["alert.min_severity"] == "critical"
    form["alert.email.recipients"] = "ops@example.com"
    form["by"] = "ann"

    r = await client.post("/setup", data=form)
    assert r.status_code == 200, r.text
    assert "Saved: Email recipients. Channels on: email." in r.text

    stored = {s["key"]: s for s in (await api.client.get("/api/settings")).json()}
    assert stored["alert.email.recipients"]["value"] == ["ops@example.com"]
    assert stored["alert.email.enabled"]["value"] is True
    untouched = [k for k, s in stored.items() if s["updated_at"] is not None]
    assert sorted(untouched) == ["alert.email.enabled", "alert.email.recipients", "setup.completed"]

    # A default changed on purpose is stored like any other value.
    form["alert.min_severity"] = "warning"
    r = await client.post("/setup", data=form)
    assert "Saved: Lowest severity that sends a notification." in r.text
    stored = {s["key"]: s for s in (await api.client.get("/api/settings")).json()}
    assert stored["alert.min_severity"]["value"] == "warning"
    assert stored["alert.tickets.tracker"]["updated_at"] is None
