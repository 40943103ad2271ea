"""The name a browser last saved a form under, offered on its next form.

Every change made from the dashboard names who made it (``by``: acknowledge, resolve, re-baseline,
the settings, the setup wizard), and typing it again on each form was a chore. When a dashboard
form that carries ``by`` succeeds, :class:`RememberBy` answers with a cookie holding the name; the
templates prefill every ``by`` field with it (``remembered_by()``), still editable. The memory is
the browser's own cookie, never the session's or the key's: people who share the admin key keep
their own names. ``/logout`` forgets it (a shared machine).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BY_COOKIE: Final = "llmscope_by"
# The submitted name, for the answer rendered by the same request (its cookie is not back yet).
BY_STATE: Final = "llmscope_by"
MAX_AGE_S: Final = 365 * 86400
BY_MAX: Final = 200
# A form with a name is a few kilobytes at most (the setup wizard); past this, not a form of ours.
MAX_BODY: Final = 256 * 1024
_FORM: Final = "application/x-www-form-urlencoded"


def _clean(name: str) -> str:
    name = name.strip()
    return name if 0 < len(name) <= BY_MAX and name.isprintable() else ""


def remembered_by(request: Request | None) -> str:
    """The name to prefill: the one this request submitted, else the browser's cookie, else ""."""
    if request is None:
        return ""
    submitted = request.scope.get("state", {}).get(BY_STATE)
    if submitted:
        return str(submitted)
    return _clean(unquote(request.cookies.get(BY_COOKIE, "")))


def template_remembered_by(ctx: Mapping[str, Any]) -> str:
    return remembered_by(ctx.get("request"))


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

        async def receive_tee() -> Message:
            nonlocal whole
            message = await receive()
            if message["type"] == "http.request" and not whole and len(body) <= MAX_BODY:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    whole = True
                    name = self._name(bytes(body))
                    if name:
                        scope.setdefault("state", {})[BY_STATE] = name
            return message

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and whole:
                name = self._name(bytes(body))
                headers = MutableHeaders(scope=message)
                if name and self._succeeded(message["status"], headers.get("location", "")):
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
    def _name(body: bytes) -> str:
        names = parse_qs(body.decode("utf-8", "replace"), max_num_fields=1000).get("by", [])
        return _clean(names[-1]) if names else ""

    @staticmethod
    def _succeeded(status: int, location: str) -> bool:
        return 200 <= status < 300 or (300 <= status < 400 and not location.startswith("/login"))


def forget_by(headers: MutableHeaders) -> None:
    """On ``/logout``: the next person at this browser is not offered this one's name."""
    headers.append("Set-Cookie", f"{BY_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
