"""Login, logout and the session every page needs.

Authentication: ``/login`` asks for the API key or the read-only key (or a page is opened once with
``?key=...``); the answer is a signed session cookie (HttpOnly, SameSite=Strict) of that key's scope,
issued by the injected :class:`~llmscope.web.auth.Authenticator`, and ended for good by ``/logout``.
Changes need the admin scope and the CSRF token (sent by htmx from the body's ``hx-headers``) or a
strict same-origin ``Origin`` (:func:`~llmscope.web.auth.change_refusal`); failed keys count
towards the per-client limit (429).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from llmscope.web.auth import (
    SESSION_COOKIE,
    Authenticator,
    RateLimited,
    change_refusal,
    client_of,
    grants,
    keys_granting,
)
from llmscope.web.pages import Pages, is_htmx
from llmscope.web.remembered_by import forget_by


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" or "https://..." would be an open redirect.
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _session_cookie(token: str, request: Request, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme == "https" else ""
    return f"{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"


def _without_key(request: Request) -> str:
    """The page asked for, less any ``?key=``: a key in ``next`` led back to itself."""
    rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "key"])
    return request.url.path + (f"?{rest}" if rest else "")


def _login_redirect(request: Request, refused_key: bool = False) -> HTTPException:
    query = {"next": _without_key(request)}
    if refused_key:
        query["refused"] = "key"
    location = "/login?" + urlencode(query)
    if is_htmx(request):
        return HTTPException(401, "login required", headers={"HX-Redirect": location})
    return HTTPException(303, "login required", headers={"Location": location})


def session_guard(auth: Authenticator, session_max_age_s: int) -> Callable[[Request], Awaitable[None]]:
    """The dependency of every page: a session, or the login redirect."""

    async def session(request: Request) -> None:
        """Require the session cookie; accept ``?key=`` once and trade it for a cookie."""
        key = request.query_params.get("key")
        if key is not None and request.method == "GET":
            scope = auth.key_scope(key, client_of(request))  # RateLimited: the app's 429
            location = _without_key(request)
            if scope is None or scope == "ingest":
                # A stale link opened while signed in: its page, not the login form.
                if await auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
                    raise HTTPException(303, "signed in", headers={"Location": location})
                raise _login_redirect(request, refused_key=True)
            cookie = _session_cookie(auth.issue_session(scope), request, session_max_age_s)
            raise HTTPException(303, "logged in", headers={"Location": location, "Set-Cookie": cookie})
        found = await auth.session(request.cookies.get(SESSION_COOKIE))
        if found is None:
            raise _login_redirect(request)
        if request.method not in ("GET", "HEAD"):
            # The front door refused these already; checked again here, where the route is.
            why = change_refusal(auth, found, request)
            if why is not None:
                raise HTTPException(403, why)
        # For the page's <meta> and the body's hx-headers: every htmx request sends it back.
        request.state.csrf_token = auth.csrf_token(found)

    return session


def _accepts_html(request: Request) -> bool:
    """Whether ``Accept`` names ``text/html`` (as every browser navigation does), at a non-zero q."""
    for item in request.headers.get("accept", "").split(","):
        kind, *params = (part.strip().lower() for part in item.split(";"))
        if kind == "text/html":
            q = next((p.partition("=")[2].strip() for p in params if p.startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False


def _to_login(exc: HTTPException) -> bool:
    # The session guard's other 303s ("?key=" traded for a cookie) lead to the page, not to /login.
    return exc.status_code == 303 and (exc.headers or {}).get("Location", "").startswith("/login")


def script_guard(
    auth: Authenticator, session: Callable[[Request], Awaitable[None]]
) -> Callable[[Request], Awaitable[None]]:
    """The dependency of the downloads scripts fetch (``/report.json``, ``/report.pdf``,
    ``/report/incidents.csv``): a request that carries an ``Authorization`` header is a script's,
    let in by its bearer key (the read or the admin scope, as ``/api/export``), else 401 (403 for
    the ingest key), never the login page's redirect, which a script would follow to a form.
    Without the header, the session decides, as on every page (``session``); when there is none,
    a request whose ``Accept`` leaves out ``text/html`` (``curl``, ``requests``: ``*/*``) is a
    script's too and gets the same 401, while a browser following a link (its navigations
    accept ``text/html``) gets the login redirect."""

    def unauthorized() -> HTTPException:
        return HTTPException(
            401,
            "missing or invalid API key: send"
            f" 'Authorization: Bearer <{keys_granting('read', auth.configured)}>'",
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def guard(request: Request) -> None:
        if "authorization" not in request.headers:
            try:
                await session(request)
            except HTTPException as exc:
                if _to_login(exc) and not _accepts_html(request):
                    raise unauthorized() from None
                raise
            return
        principal = await auth.principal(request)  # RateLimited: the app's 429
        if principal is None:
            raise unauthorized()
        if not grants(principal.scope, "read"):
            raise HTTPException(
                403,
                f"this key's scope is '{principal.scope}'; {request.url.path} needs scope 'read'"
                f" ({keys_granting('read', auth.configured)})",
            )

    return guard


def reader_check(auth: Authenticator) -> Callable[[Request], Awaitable[bool]]:
    """Whether a request comes from a reader (for the status page and badges)."""

    async def signed_in(request: Request) -> bool:
        """A reader: the read scope as a bearer key, or any session (the status page, badges)."""
        try:
            principal = await auth.principal(request)
        except RateLimited:
            return False
        if principal is not None and principal.session is not None:
            request.state.csrf_token = auth.csrf_token(principal.session)
        return principal is not None and principal.scope in ("admin", "read")

    return signed_in


def add_login_routes(router: APIRouter, auth: Authenticator, pages: Pages, session_max_age_s: int) -> None:
    """Register ``/login`` and ``/logout`` (open to all: they make and end sessions)."""

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/", refused: str = "") -> HTMLResponse:
        error = (
            "The key in that link was not accepted: enter the API key or the read-only key."
            if refused == "key"
            else None
        )
        return pages.render(request, "login.html", {"next": _safe_next(next), "error": error})

    @router.post("/login", response_model=None)
    async def login(
        request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        def refused(error: str, status_code: int, headers: dict[str, str] | None = None) -> HTMLResponse:
            context = {"next": _safe_next(next), "error": error}
            return pages.render(request, "login.html", context, status_code=status_code, headers=headers)

        try:
            scope = auth.key_scope(key, client_of(request))
        except RateLimited as exc:
            wait = str(exc.retry_after_s)
            return refused(f"Too many failed attempts: try again in {wait} s.", 429, {"Retry-After": wait})
        if scope is None:
            return refused("That is not the API key (nor the read-only key).", 401)
        if scope == "ingest":
            return refused(
                "The ingest key only sends data: log in with the API key or the read-only key.", 403
            )
        response = RedirectResponse(_safe_next(next), status_code=303)
        response.headers["Set-Cookie"] = _session_cookie(
            auth.issue_session(scope), request, session_max_age_s
        )
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        """End the session for good: a copy of the cookie no longer works either."""
        found = await auth.session(request.cookies.get(SESSION_COOKIE))
        if found is not None:
            why = change_refusal(auth, found, request)
            if why is not None:
                raise HTTPException(403, why)
            await auth.revoke(found)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        forget_by(response.headers)
        return response
