"""Local GitHub-, Jira- and GitLab-compatible issue trackers that check every request.

Each keeps its issues in memory and records every request; a request that breaks the API's
contract (wrong credential header, path, method or JSON body) is answered 4xx and listed in
``problems``, which a test asserts is empty.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

TOKEN = "tkn-s3cret-do-not-log"


@dataclass
class Issue:
    key: str
    title: str
    body: Any
    labels: list[str]
    state: str = "open"
    comments: list[Any] = field(default_factory=list)
    reopened: int = 0
    """how many times it was reopened (from closed or done)"""
    closes: int = 0
    """how many times it was closed (or transitioned to done)"""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class _Server:
    def __init__(self) -> None:
        self.issues: dict[str, Issue] = {}
        self.requests: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.lose_creates = 0
        """answer this many creates with 502 after creating the issue (the answer is lost)"""
        self._runner: web.AppRunner | None = None
        self.url = ""

    def problem(self, text: str, status: int = 400) -> web.Response:
        self.problems.append(text)
        return web.json_response({"message": text}, status=status)

    async def start(self, app: web.Application) -> str:
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def json_body(self, request: web.Request, keys: dict[str, type | tuple[type, ...]]) -> Any:
        """The body when it is a JSON object with exactly ``keys`` of the given types, else None."""
        if request.content_type != "application/json":
            self.problems.append(f"{request.method} {request.path}: content type {request.content_type}")
            return None
        try:
            body = await request.json()
        except ValueError:
            self.problems.append(f"{request.method} {request.path}: not JSON")
            return None
        if not isinstance(body, dict) or set(body) != set(keys):
            self.problems.append(f"{request.method} {request.path}: keys {sorted(body)} != {sorted(keys)}")
            return None
        for k, t in keys.items():
            if not isinstance(body[k], t):
                self.problems.append(f"{request.method} {request.path}: {k} is {type(body[k]).__name__}")
                return None
        return body

    def created(self) -> list[Issue]:
        return list(self.issues.values())


class FakeGitHub(_Server):
    """``/repos/acme/llm/issues`` of the GitHub REST API."""

    def __init__(self, repo: str = "acme/llm") -> None:
        super().__init__()
        self.repo = repo

    async def start(self) -> str:  # type: ignore[override]
        app = web.Application(middlewares=[self._check])
        base = f"/repos/{self.repo}/issues"
        app.router.add_get(base, self._list)
        app.router.add_post(base, self._create)
        app.router.add_post(base + "/{n}/comments", self._comment)
        app.router.add_patch(base + "/{n}", self._close)
        return await super().start(app)

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.problem(f"{request.method} {request.path}: bad Authorization", 401)
        if request.headers.get("Accept") != "application/vnd.github+json":
            return self.problem(f"{request.method} {request.path}: Accept header")
        if request.headers.get("X-GitHub-Api-Version") != "2022-11-28" or not request.headers.get(
            "User-Agent"
        ):
            return self.problem(f"{request.method} {request.path}: API version or User-Agent")
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPNotFound:
            return self.problem(f"{request.method} {request.path}: no such route", 404)

    def _json(self, issue: Issue) -> dict[str, Any]:
        return {
            "number": int(issue.key),
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "labels": [{"name": n} for n in issue.labels],
            "html_url": f"https://github.example/{self.repo}/issues/{issue.key}",
            "updated_at": issue.created_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    async def _list(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("state") != "all" or "since" not in q:
            return self.problem(f"list: query {dict(q)}")
        since = datetime.strptime(q["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        page, per_page = int(q.get("page", "1")), int(q.get("per_page", "30"))
        found = [self._json(i) for i in self.issues.values() if i.created_at >= since]
        return web.json_response(found[(page - 1) * per_page : page * per_page])

    async def _create(self, request: web.Request) -> web.Response:
        body = await self.json_body(request, {"title": str, "body": str, "labels": list})
        if body is None:
            return web.json_response({"message": "Validation Failed"}, status=422)
        key = str(len(self.issues) + 1)
        self.issues[key] = Issue(key, body["title"], body["body"], body["labels"])
        if self.lose_creates:
            self.lose_creates -= 1
            return web.json_response({"message": "bad gateway"}, status=502)
        return web.json_response(self._json(self.issues[key]), status=201)

    def _issue(self, request: web.Request) -> Issue | None:
        return self.issues.get(request.match_info["n"])

    async def _comment(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        body = await self.json_body(request, {"body": str})
        if issue is None or body is None:
            return self.problem(f"comment on {request.path}", 404 if issue is None else 422)
        issue.comments.append(body["body"])
        return web.json_response({"id": len(issue.comments), "body": body["body"]}, status=201)

    async def _close(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is not None and issue.state == "closed":
            # Reopening: PATCH {"state": "open"}.
            body = await self.json_body(request, {"state": str})
            if body is None or body["state"] != "open":
                return self.problem(f"reopen {request.path}", 422)
            issue.state = "open"
            issue.reopened += 1
            return web.json_response(self._json(issue))
        body = await self.json_body(request, {"state": str, "state_reason": str})
        if issue is None or body is None or body["state"] != "closed":
            return self.problem(f"close {request.path}", 404 if issue is None else 422)
        issue.state = "closed"
        issue.closes += 1
        return web.json_response(self._json(issue))


JIRA_TRANSITIONS = [
    {"id": "11", "name": "Start progress", "to": {"statusCategory": {"key": "indeterminate"}}},
    {"id": "31", "name": "Done", "to": {"statusCategory": {"key": "done"}}},
    {"id": "41", "name": "Reopen", "to": {"statusCategory": {"key": "new"}}},
]


class FakeJira(_Server):
    """``/rest/api/{2,3}`` of Jira Cloud: Basic auth with an email and an API token."""

    def __init__(self, api: int = 2, project: str = "OPS", user: str = "ops@acme.example") -> None:
        super().__init__()
        self.api = api
        self.project = project
        self.user = user
        self.transitions = list(JIRA_TRANSITIONS)
        """the workflow's transitions from any status (a test may take "Done" away)"""

    async def start(self) -> str:  # type: ignore[override]
        app = web.Application(middlewares=[self._check])
        base = f"/rest/api/{self.api}"
        app.router.add_get(base + ("/search/jql" if self.api == 3 else "/search"), self._search)
        app.router.add_post(base + "/issue", self._create)
        app.router.add_post(base + "/issue/{key}/comment", self._comment)
        app.router.add_get(base + "/issue/{key}", self._issue_status)
        app.router.add_get(base + "/issue/{key}/transitions", self._transitions)
        app.router.add_post(base + "/issue/{key}/transitions", self._transition)
        return await super().start(app)

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        basic = "Basic " + base64.b64encode(f"{self.user}:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != basic:
            return self.problem(f"{request.method} {request.path}: bad Authorization", 401)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPNotFound:
            return self.problem(f"{request.method} {request.path}: no such route", 404)

    def valid_doc(self, doc: Any) -> bool:
        """v2: wiki-markup text; v3: an ADF document of headings and paragraphs of text nodes."""
        if self.api == 2:
            return isinstance(doc, str) and bool(doc)
        if not (isinstance(doc, dict) and doc.get("type") == "doc" and doc.get("version") == 1):
            return False
        for block in doc["content"]:
            if block["type"] not in ("heading", "paragraph"):
                return False
            for node in block["content"]:
                if node["type"] == "text" and not node["text"]:
                    return False  # Jira refuses empty text nodes
                if node["type"] not in ("text", "hardBreak"):
                    return False
        return True

    @staticmethod
    def text_of(doc: Any) -> str:
        if isinstance(doc, str):
            return doc
        return "\n".join("".join(n.get("text", "\n") for n in block["content"]) for block in doc["content"])

    async def _search(self, request: web.Request) -> web.Response:
        jql = request.query.get("jql", "")
        m = re.fullmatch(r'project = "(\w+)" AND labels = "([\w.-]+)" ORDER BY created ASC', jql)
        if m is None or m.group(1) != self.project:
            return self.problem(f"search: jql {jql!r}")
        found = [{"id": i.key, "key": i.key} for i in self.issues.values() if m.group(2) in i.labels]
        return web.json_response({"issues": found[:1]})

    async def _create(self, request: web.Request) -> web.Response:
        body = await self.json_body(request, {"fields": dict})
        if body is None:
            return web.json_response({"errorMessages": ["bad body"]}, status=400)
        f = body["fields"]
        if (
            set(f) != {"project", "summary", "issuetype", "description", "labels"}
            or f["project"] != {"key": self.project}
            or not isinstance(f["summary"], str)
            or len(f["summary"]) > 255
            or f["issuetype"] != {"name": "Task"}
            or not self.valid_doc(f["description"])
            or not all(isinstance(x, str) and " " not in x for x in f["labels"])
        ):
            return self.problem(f"create: fields {f!r}")
        key = f"{self.project}-{len(self.issues) + 1}"
        self.issues[key] = Issue(key, f["summary"], f["description"], f["labels"])
        if self.lose_creates:
            self.lose_creates -= 1
            return web.json_response({"errorMessages": ["gateway"]}, status=502)
        return web.json_response({"id": str(len(self.issues)), "key": key, "self": "x"}, status=201)

    async def _comment(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        body = await self.json_body(request, {"body": (str, dict)})
        if issue is None or body is None or not self.valid_doc(body["body"]):
            return self.problem(f"comment {request.path}", 404 if issue is None else 400)
        issue.comments.append(body["body"])
        return web.json_response({"id": str(len(issue.comments))}, status=201)

    async def _issue_status(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        if issue is None or request.query.get("fields") != "status":
            return self.problem(f"issue {request.path_qs}", 404 if issue is None else 400)
        category = {"done": "done", "open": "new"}.get(issue.state, "indeterminate")
        return web.json_response(
            {"key": issue.key, "fields": {"status": {"statusCategory": {"key": category}}}}
        )

    async def _transitions(self, request: web.Request) -> web.Response:
        if request.match_info["key"] not in self.issues:
            return self.problem(f"transitions {request.path}", 404)
        return web.json_response({"transitions": self.transitions})

    async def _transition(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["key"])
        body = await self.json_body(request, {"transition": dict})
        if issue is None or body is None or body["transition"] not in ({"id": "31"}, {"id": "41"}):
            return self.problem(f"transition {request.path}: {body}", 404 if issue is None else 400)
        if body["transition"] == {"id": "41"}:
            issue.reopened += issue.state == "done"
            issue.state = "open"
        else:
            issue.state = "done"
            issue.closes += 1
        return web.Response(status=204)


class FakeGitLab(_Server):
    """``/api/v4/projects/:id/issues`` of GitLab: a ``PRIVATE-TOKEN`` header."""

    def __init__(self, project: str = "acme/llm") -> None:
        super().__init__()
        self.project = project

    async def start(self) -> str:  # type: ignore[override]
        app = web.Application(middlewares=[self._check])
        base = "/api/v4/projects/{project:.+}/issues"
        app.router.add_get(base, self._list)
        app.router.add_post(base, self._create)
        app.router.add_post(base + "/{iid}/notes", self._note)
        app.router.add_put(base + "/{iid}", self._update)
        return await super().start(app)

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path))
        if request.headers.get("PRIVATE-TOKEN") != TOKEN or "Authorization" in request.headers:
            return self.problem(f"{request.method} {request.path}: bad token header", 401)
        # The project path travels URL-encoded as one segment: acme%2Fllm.
        if f"/projects/{self.project.replace('/', '%2F')}/" not in request.raw_path + "/":
            return self.problem(f"{request.method} {request.raw_path}: project not encoded", 404)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPNotFound:
            return self.problem(f"{request.method} {request.path}: no such route", 404)

    def _json(self, i: Issue) -> dict[str, Any]:
        return {"iid": int(i.key), "description": i.body, "state": i.state, "web_url": f"https://gl/{i.key}"}

    async def _list(self, request: web.Request) -> web.Response:
        if "updated_after" not in request.query:
            return self.problem("list without updated_after")
        return web.json_response([self._json(i) for i in self.issues.values()])

    async def _create(self, request: web.Request) -> web.Response:
        body = await self.json_body(request, {"title": str, "description": str, "labels": str})
        if body is None:
            return web.json_response({"message": "bad"}, status=400)
        key = str(len(self.issues) + 1)
        self.issues[key] = Issue(key, body["title"], body["description"], body["labels"].split(","))
        if self.lose_creates:
            self.lose_creates -= 1
            return web.json_response({"message": "gateway"}, status=502)
        return web.json_response(self._json(self.issues[key]), status=201)

    async def _note(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["iid"])
        body = await self.json_body(request, {"body": str})
        if issue is None or body is None:
            return self.problem(f"note {request.path}", 404 if issue is None else 400)
        issue.comments.append(body["body"])
        return web.json_response({"id": len(issue.comments)}, status=201)

    async def _update(self, request: web.Request) -> web.Response:
        issue = self.issues.get(request.match_info["iid"])
        body = await self.json_body(request, {"state_event": str})
        if issue is None or body is None or body["state_event"] not in ("close", "reopen"):
            return self.problem(f"update {request.path}", 404 if issue is None else 400)
        if body["state_event"] == "reopen":
            issue.reopened += issue.state == "closed"
            issue.state = "open"
        else:
            issue.state = "closed"
            issue.closes += 1
        return web.json_response(self._json(issue))
