"""A strict fake of Synap's API for webhook subscriptions, on 127.0.0.1 (aiohttp).

It checks what the documentation and JSON:API require of a client, and answers like a JSON:API
server: the token (``Authorization: Bearer``, else 401), the media type (``Content-Type`` exactly
``application/vnd.api+json``, else 415; an ``Accept`` that lists the media type only with
parameters, 406), the document shape (``data.type``, no client ``id`` on create, ``id`` matching
the URL on update, known attributes with the right types, else 422 / 409), with errors as
``{"errors": [{"status", "title", "detail"}]}``.

Documented: ``POST /v3/webhook-subscriptions``. Inferred: ``GET`` the collection (pages of
:data:`PAGE` with ``links.next``; ``lists=False``: 405) and ``PATCH`` / ``DELETE`` ``/{id}``
(``changes=False``: 405), as an API that only does what is documented might answer.
``hang`` makes every request wait forever (for the client's deadline). ``echo`` ("json" or
"text") answers every write with an error that echoes the request, its ``Authorization`` header
and body (the webhook password) included, as careless APIs do. What it holds is in
:attr:`FakeSynap.subscriptions`, passwords included (the real API never shows them).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

MEDIA_TYPE = "application/vnd.api+json"
TYPE = "WebhookSubscription"
PAGE = 5
ATTRIBUTES = {"eventName": str, "targetUrl": str, "basicAuth": dict, "active": bool}


@dataclass
class Held:
    id: str
    event_name: str
    target_url: str
    username: str | None
    password: str | None
    active: bool


class FakeSynap:
    def __init__(self, token: str, *, lists: bool = True, changes: bool = True) -> None:
        self.token = token
        self.lists = lists
        self.changes = changes
        self.hang = False
        self.echo: str | None = None
        self.subscriptions: dict[str, Held] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._ids = itertools.count(100)
        self._runner: web.AppRunner | None = None
        self._released = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def add(
        self,
        event_name: str,
        target_url: str,
        username: str | None = "synap",
        password: str | None = "old",  # noqa: S107 - a test subscription's password
        active: bool = True,
    ) -> str:
        ident = str(next(self._ids))
        self.subscriptions[ident] = Held(ident, event_name, target_url, username, password, active)
        return ident

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m != "GET"]

    async def __aenter__(self) -> FakeSynap:
        app = web.Application(middlewares=[self._checks])
        app.router.add_route("*", "/v3/webhook-subscriptions", self._collection)
        app.router.add_route("*", "/v3/webhook-subscriptions/{id}", self._member)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- the checks every request passes ------------------------------------------------

    @web.middleware
    async def _checks(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.hang:
            await self._released.wait()  # until the test ends (__aexit__)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "missing, invalid or revoked token")
        if self.echo is not None and request.method != "GET":
            return await _echo(request, self.echo)
        accept = request.headers.get("Accept")
        if accept is not None and MEDIA_TYPE in accept:
            listed = [part.strip() for part in accept.split(",")]
            if MEDIA_TYPE not in listed:
                return _error(406, "Not Acceptable", "the media type only with parameters")
        if request.can_read_body and request.headers.get("Content-Type") != MEDIA_TYPE:
            return _error(415, "Unsupported Media Type", f"Content-Type must be {MEDIA_TYPE}")
        response: web.StreamResponse = await handler(request)
        return response

    # ---- the routes ------------------------------------------------------------------------

    async def _collection(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            return await self._create(request)
        if request.method == "GET" and self.lists:
            return self._list(request)
        return _error(405, "Method Not Allowed", f"{request.method} is not supported here")

    async def _member(self, request: web.Request) -> web.Response:
        if not self.changes or request.method not in ("PATCH", "DELETE"):
            return _error(405, "Method Not Allowed", f"{request.method} is not supported here")
        held = self.subscriptions.get(request.match_info["id"])
        if held is None:
            return _error(404, "Not Found", "no such subscription")
        if request.method == "DELETE":
            del self.subscriptions[held.id]
            return web.Response(status=204)
        document = await _document(request)
        if isinstance(document, web.Response):
            return document
        data = document["data"]
        if data.get("id") != held.id:
            return _error(409, "Conflict", "data.id must match the URL")
        problem = _attributes(data.get("attributes"), partial=True)
        if problem:
            return _error(422, "Unprocessable Entity", problem)
        _apply(held, data["attributes"])
        return _json({"data": _resource(held)})

    async def _create(self, request: web.Request) -> web.Response:
        document = await _document(request)
        if isinstance(document, web.Response):
            return document
        data = document["data"]
        if "id" in data:
            return _error(403, "Forbidden", "client-generated ids are not supported")
        problem = _attributes(data.get("attributes"), partial=False)
        if problem:
            return _error(422, "Unprocessable Entity", problem)
        held = Held(str(next(self._ids)), "", "", None, None, True)
        _apply(held, data["attributes"])
        self.subscriptions[held.id] = held
        return _json({"data": _resource(held)}, 201)

    def _list(self, request: web.Request) -> web.Response:
        start = int(request.query.get("page[offset]", "0"))
        held = list(self.subscriptions.values())
        document: dict[str, Any] = {"data": [_resource(h) for h in held[start : start + PAGE]]}
        if start + PAGE < len(held):
            document["links"] = {"next": f"/v3/webhook-subscriptions?page[offset]={start + PAGE}"}
        return _json(document)


async def _document(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        document = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return _error(400, "Bad Request", "the body is not JSON")
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        return _error(400, "Bad Request", "a JSON:API document with a data object is required")
    if document["data"].get("type") != TYPE:
        return _error(409, "Conflict", f"data.type must be {TYPE}")
    return document


def _attributes(attributes: Any, *, partial: bool) -> str | None:
    if not isinstance(attributes, dict):
        return "data.attributes must be an object"
    for name, value in attributes.items():
        kind = ATTRIBUTES.get(name)
        if kind is None:
            return f"unknown attribute {name}"
        if not isinstance(value, kind):
            return f"{name} must be a {kind.__name__}"
    if not partial:
        for name in ("eventName", "targetUrl"):
            if not attributes.get(name):
                return f"{name} is required"
    auth = attributes.get("basicAuth")
    if auth is not None and (
        set(auth) != {"username", "password"} or not all(isinstance(v, str) for v in auth.values())
    ):
        return "basicAuth must be {username, password} strings"
    return None


def _apply(held: Held, attributes: dict[str, Any]) -> None:
    held.event_name = attributes.get("eventName", held.event_name)
    held.target_url = attributes.get("targetUrl", held.target_url)
    if "basicAuth" in attributes:
        held.username = attributes["basicAuth"]["username"]
        held.password = attributes["basicAuth"]["password"]
    held.active = attributes.get("active", held.active)


def _resource(held: Held) -> dict[str, Any]:
    """As an API would show it: the user name, never the password."""
    attributes: dict[str, Any] = {
        "eventName": held.event_name,
        "targetUrl": held.target_url,
        "active": held.active,
    }
    if held.username is not None:
        attributes["basicAuth"] = {"username": held.username}
    return {"type": TYPE, "id": held.id, "attributes": attributes}


def _json(document: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type=MEDIA_TYPE)


async def _echo(request: web.Request, how: str) -> web.Response:
    said = f"{request.method} {request.path} {dict(request.headers)} {await request.text()}"
    if how == "text":
        return web.Response(status=400, text=f"bad request: {said}")
    error = {"status": "422", "code": "invalid_attribute", "title": said, "detail": said}
    return _json({"errors": [error, {"status": "422", "code": f"echo {said}"}]}, 422)


def _error(status: int, title: str, detail: str) -> web.Response:
    errors = {"errors": [{"status": str(status), "title": title, "detail": detail}]}
    return _json(errors, status)
