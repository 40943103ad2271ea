"""A settings page section stores the fields changed, never the values it shows: saved back, a
shown default would pin itself over the environment (saving "What notifies" stored the group and
repeat intervals). A stored value can be deleted again, and "tracker none" picked is stored."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx

from tests.api.conftest import Api
from tests.web.test_pages import login


class _SectionForm(HTMLParser):
    """What a browser posts for one section's form: (name, value) pairs, in order."""

    def __init__(self, section: str) -> None:
        super().__init__()
        self.action = f"/settings/section/{section}"
        self.pairs: list[tuple[str, str]] = []
        self.reset_boxes: list[str] = []
        self._in_form = False
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []
        self._option: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._in_form = a.get("hx-post") == self.action
        elif not self._in_form:
            return
        elif tag == "option" and self._select is not None:
            self._option, self._text = a, ""
        elif tag == "select":
            self._select, self._options = a.get("name"), []
        elif tag == "input" and a.get("name"):
            name, value = a["name"] or "", a.get("value") or ""
            if a.get("type") == "checkbox":
                if name == "reset":
                    self.reset_boxes.append(value)
                if "checked" not in a:
                    return
            self.pairs.append((name, value))

    def handle_data(self, data: str) -> None:
        if self._option is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "option" and self._option is not None:
            value = self._option["value"] if "value" in self._option else self._text.strip()
            self._options.append((value or "", "selected" in self._option))
            self._option = None
        elif tag == "select" and self._select is not None:
            # A select posts its selected option, else its first.
            chosen = next((v for v, sel in self._options if sel), self._options[0][0])
            self.pairs.append((self._select, chosen))
            self._select = None


async def _form(client: httpx.AsyncClient, section: str) -> _SectionForm:
    page = await client.get("/settings")
    assert page.status_code == 200
    parser = _SectionForm(section)
    parser.feed(page.text)
    assert parser.pairs, f"no form for section {section}"
    return parser


def _with(pairs: list[tuple[str, str]], **changed: str) -> list[tuple[str, str]]:
    keys = {k.replace("__", "."): v for k, v in changed.items()}
    return [(k, keys.get(k, v)) for k, v in pairs]


async def _post(client: httpx.AsyncClient, section: str, pairs: list[tuple[str, str]]) -> httpx.Response:
    body: dict[str, list[str]] = {}
    for k, v in pairs:
        body.setdefault(k, []).append(v)  # repeated names in order (a checkbox after its hidden)
    body["by"] = ["ann"]  # who saves: the one field a person always types
    return await client.post(f"/settings/section/{section}", data=body)


async def _stored(api: Api) -> dict[str, object]:
    return {s.key: s.value for s in await api.store.settings() if s.updated_at is not None}


async def test_a_section_stores_only_what_was_changed_and_can_delete_a_stored_value(api: Api) -> None:
    client = await login(api)
    # Saved as shown, nothing is stored.
    for section in ("policy", "email", "slack", "webhook", "pagerduty", "tickets", "dashboard"):
        r = await _post(client, section, (await _form(client, section)).pairs)
        assert r.status_code == 200, r.text
    assert await _stored(api) == {}
    policy = await _form(client, "policy")
    shown = dict(policy.pairs)
    assert shown["alert.group_interval_s"] == "300"  # the default, shown filled in
    assert shown["alert.min_severity"] == ""  # a choice not stored reads "not set"

    # One field changed: that one is stored, the intervals shown beside it are not.
    r = await _post(client, "policy", _with(policy.pairs, alert__min_severity="warning"))
    assert r.status_code == 200, r.text
    assert await _stored(api) == {"alert.min_severity": "warning"}
    r = await _post(
        client, "policy", _with((await _form(client, "policy")).pairs, alert__group_interval_s="60")
    )
    assert r.status_code == 200, r.text
    assert await _stored(api) == {"alert.min_severity": "warning", "alert.group_interval_s": 60}

    # Back to the environment's or the default value: "use the default" on a stored number, and
    # "not set" on a stored choice, delete them.
    policy = await _form(client, "policy")
    assert sorted(policy.reset_boxes) == ["alert.group_interval_s"]
    r = await _post(
        client, "policy", [*_with(policy.pairs, alert__min_severity=""), ("reset", "alert.group_interval_s")]
    )
    assert r.status_code == 200, r.text
    assert await _stored(api) == {}
    values = {s.key: s.value for s in await api.store.settings()}
    assert (values["alert.group_interval_s"], values["alert.min_severity"]) == (300, "critical")

    # A bad field is refused, named, and nothing of the section is stored.
    r = await _post(
        client, "policy", _with(policy.pairs, alert__min_severity="info", alert__repeat_interval_s="soon")
    )
    assert r.status_code == 422
    assert "Repeat interval (s): expected a whole number" in r.text
    assert await _stored(api) == {}


async def test_tracker_none_picked_is_stored_and_stays_stored(api: Api) -> None:
    client = await login(api)
    tickets = await _form(client, "tickets")
    assert dict(tickets.pairs)["alert.tickets.tracker"] == ""
    r = await _post(client, "tickets", _with(tickets.pairs, alert__tickets__tracker="none"))
    assert r.status_code == 200, r.text
    assert await _stored(api) == {"alert.tickets.tracker": "none"}
    # Shown as stored now, and saved again as shown it stays.
    tickets = await _form(client, "tickets")
    assert dict(tickets.pairs)["alert.tickets.tracker"] == "none"
    before = {s.key: s.updated_at for s in await api.store.settings()}["alert.tickets.tracker"]
    r = await _post(client, "tickets", tickets.pairs)
    assert r.status_code == 200, r.text
    after = {s.key: s.updated_at for s in await api.store.settings()}["alert.tickets.tracker"]
    assert (await _stored(api), after) == ({"alert.tickets.tracker": "none"}, before)
