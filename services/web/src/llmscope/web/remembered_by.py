"""The name a browser last saved a form under, offered on its next form.

Every change made from the dashboard names who made it (``by``: acknowledge, resolve, re-baseline,
the settings, the setup wizard), and typing it again on each form was a chore. When a dashboard
form that carries ``by`` succeeds, :class:`RememberBy` answers with a cookie holding the name; the
templates prefill every ``by`` field with it (``remembered_by()``), still editable. The memory is
the browser's own cookie, never the session's or the key's: people who share the admin key keep
their own names. ``/logout`` forgets it (a shared machine).

A form that comes back refused shows its ``by`` as it was sent, blank included (never the cookie's
name in a field the person had cleared), and a refused form sets no cookie: the routes that answer
a refusal with a 200 for htmx mark it with :func:`refuse_by` (``Pages.render`` does for every
answer with an error toast).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BY_COOKIE: Final = "llmscope_by"
# The submitted name as sent (blank too), for the answer rendered by the same request (its cookie
# is not back yet, and a refused form re-shows what was typed).
BY_STATE: Final = "llmscope_by"
# Set by a route that refused the form: no cookie, whatever the status (htmx refusals are 200s).
REFUSED_STATE: Final = "llmscope_by_refused"
MAX_AGE_S: Final = 365 * 86400
BY_MAX: Final = 200
# A form with a name is a few kilobytes at most (the setup wizard); past this, not a form of ours.
MAX_BODY: Final = 256 * 1024
_FORM: Final = "application/x-www-form-urlencoded"


def _clean(name: str) -> str:
    name = name.strip()
    return name if 0 < len(name) <= BY_MAX and name.isprintable() else ""


def remembered_by(request: Request | None) -> str:
    """The name to prefill: the one this request's form sent (blank too: a field the person cleared
    stays cleared), else the browser's cookie, else ""."""
    if request is None:
        return ""
    state = request.scope.get("state", {})
    if BY_STATE in state:
        return str(state[BY_STATE])
    return cookie_by(request)


def cookie_by(request: Request) -> str:
    """The name the browser remembers, whatever this request's form sent: what the forms of a
    page show beside one refused (a refusal remembers nothing)."""
    return _clean(unquote(request.cookies.get(BY_COOKIE, "")))


def template_remembered_by(ctx: Mapping[str, Any]) -> str:
    return remembered_by(ctx.get("request"))


def refuse_by(request: Request) -> None:
    """Mark this request's form as refused: its name is not remembered (an htmx refusal is a 200)."""
    request.scope.setdefault("state", {})[REFUSED_STATE] = True


class RememberBy:
    """Sets the ``by`` cookie on a dashboard form's success (a 2xx, or a 3xx that is not the login
    redirect) when the form named someone; the JSON API's bodies are never read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._form_post(scope):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        whole = False
        name = ""  # the form's name, cleaned, once its body is whole

        async def receive_tee() -> Message:
            nonlocal whole, name
            message = await receive()
            if message["type"] == "http.request" and not whole and len(body) <= MAX_BODY:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    whole = True
                    sent = self._sent(bytes(body))
                    if sent is not None:
                        scope.setdefault("state", {})[BY_STATE] = sent.strip()
                        name = _clean(sent)
            return message

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and whole:
                headers = MutableHeaders(scope=message)
                refused = bool(scope.get("state", {}).get(REFUSED_STATE))
                if name and not refused and self._succeeded(message["status"], headers.get("location", "")):
                    secure = "; Secure" if scope.get("scheme") == "https" else ""
                    headers.append(
                        "Set-Cookie",
                        f"{BY_COOKIE}={quote(name, safe='')}; Path=/; Max-Age={MAX_AGE_S};"
                        f" HttpOnly; SameSite=Strict{secure}",
                    )
            await send(message)

        await self.app(scope, receive_tee, send_with_cookie)

    @staticmethod
    def _form_post(scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return False
        if scope["path"].startswith("/api/"):
            return False
        for key, value in scope["headers"]:
            if key == b"content-type":
                return bool(value.split(b";")[0].strip().lower() == _FORM.encode())
        return False

    @staticmethod
    def _sent(body: bytes) -> str | None:
        """The form's ``by`` as sent (blank kept), or None when it has none."""
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=1000)
        names = fields.get("by", [])
        return names[-1] if names else None

    @staticmethod
    def _succeeded(status: int, location: str) -> bool:
        return 200 <= status < 300 or (300 <= status < 400 and not location.startswith("/login"))


def forget_by(headers: MutableHeaders) -> None:
    """On ``/logout``: the next person at this browser is not offered this one's name."""
    headers.append("Set-Cookie", f"{BY_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
