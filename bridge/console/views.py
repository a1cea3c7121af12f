"""The console's request handlers: sign-in, overview, search, a webhook's story, dead letters.

Every handler but sign-in and the static files runs behind :func:`signed_in` (the middleware in
``app``), which puts the :class:`~bridge.console.security.Session` on the request. A POST also
needs the session's CSRF token; the replay asks for a confirmation first and logs one
``console_replay`` line naming the console user and the client address (the audit trail).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from bridge import explain, logs
from bridge.console import pages
from bridge.console.security import (
    COOKIE,
    LoginThrottle,
    Session,
    Sessions,
    credentials_match,
    csrf_ok,
    set_session_cookie,
)
from bridge.console.traffic import Traffic
from bridge.mapping.intake import remapper
from bridge.receive.clients import client_address
from bridge.receive.runtime import Runtime
from bridge.store import MESSAGE_STATES, DeadLetterFilter

log = logs.get(__name__)

#: Dead letters one replay may name by id (a selection); a whole reason has no such cap.
MAX_SELECTED = 1000


@dataclass
class Console:
    """What the console's handlers share: the bridge's runtime and the console's own state."""

    runtime: Runtime
    sessions: Sessions
    throttle: LoginThrottle
    traffic: Traffic


CONSOLE = web.AppKey("console", Console)
SESSION = web.RequestKey("console_session", Session)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PUBLIC = ("/login", "/static/")


def _client(request: web.Request) -> str:
    return client_address(request, request.app[CONSOLE].runtime.config.server.trusted_proxies)


def _session(request: web.Request) -> Session:
    return request[SESSION]


def _render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    session = request.get(SESSION)
    base = {"session": session, "path": request.path, "explain": explain, "pages": pages}
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


@web.middleware
async def signed_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A session for every page but sign-in and the static files; a cross-site POST refused."""
    if request.method == "POST" and not _same_origin(request):
        raise web.HTTPForbidden(text="cross-site request refused")
    if request.path.startswith(PUBLIC):
        return await handler(request)
    session = request.app[CONSOLE].sessions.get(request.cookies.get(COOKIE))
    if session is None:
        if request.method == "GET":
            raise web.HTTPSeeOther("/login")
        raise web.HTTPForbidden(text="sign in first")
    request[SESSION] = session
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a POST comes from; when it does, it must be this console."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == request.host


# ---- sign-in ---------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    return _render(request, "login.html", {"error": None})


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    client = _client(request)
    wait = console.throttle.blocked_for(client)
    if wait > 0:
        # Past the limit a client may go on trying: one line a second, with the count left out.
        suppressed = console.runtime.throttle.allow("console_login_refused")
        if suppressed is not None:
            log.warning(
                "console_login_refused",
                client=client,
                retry_after_secs=round(wait),
                suppressed=suppressed,
            )
        response = _render(
            request, "login.html", {"error": "Too many failed sign-ins: try again later."}, 429
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    form = await request.post()
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    settings = console.runtime.config.console
    if not credentials_match(settings, username, password):
        failures = console.throttle.failed(client)
        log.warning("console_login_failed", client=client, failures=failures)
        return _render(request, "login.html", {"error": "Wrong username or password."}, 401)
    console.throttle.succeeded(client)
    token, _ = console.sessions.start(username)
    log.info("console_login", user=username, client=client)
    response = web.HTTPSeeOther("/")
    set_session_cookie(response, token, settings)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    if not csrf_ok(_session(request), form.get("csrf")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    request.app[CONSOLE].sessions.end(request.cookies.get(COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    return response


# ---- pages -----------------------------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    view = await pages.overview(console.runtime, console.traffic)
    return _render(request, "overview.html", {"view": view})


async def overview_live(request: web.Request) -> web.Response:
    """The overview's changing part alone, which the page's script fetches every few seconds."""
    console = request.app[CONSOLE]
    view = await pages.overview(console.runtime, console.traffic)
    return _render(request, "live.html", {"view": view})


async def events(request: web.Request) -> web.Response:
    runtime = request.app[CONSOLE].runtime
    context: dict[str, Any] = {
        "form": request.query,
        "searched": False,
        "records": [],
        "states": MESSAGE_STATES,
        "limit": pages.SEARCH_LIMIT,
        "error": None,
    }
    try:
        query = pages.search_query(request.query)
    except pages.SearchError as exc:
        context["error"] = str(exc)
        return _render(request, "events.html", context, 400)
    if query is not None:
        context["searched"] = True
        context["records"] = await runtime.store.find_events(query, runtime.clock())
    return _render(request, "events.html", context)


async def event(request: web.Request) -> web.Response:
    runtime = request.app[CONSOLE].runtime
    webhook_id = request.match_info["webhook_id"]
    found = None
    if pages.valid_webhook_id(webhook_id):
        found = await runtime.store.event(webhook_id, runtime.clock())
    if found is None:
        return _render(
            request, "missing.html", {"message": f"There is no stored webhook {webhook_id}."}, 404
        )
    return _render(request, "event.html", {"detail": found})


async def dead_letters(request: web.Request) -> web.Response:
    runtime = request.app[CONSOLE].runtime
    letters = await runtime.store.dead_letters(DeadLetterFilter(limit=pages.LETTERS_SHOWN))
    stats = await runtime.store.stats(runtime.clock() - pages.HOUR)
    context = {
        "groups": pages.by_reason(letters),
        "counts": dict(sorted(stats.dead_letters.items(), key=lambda kv: (-kv[1], kv[0]))),
        "shown": len(letters),
        "limit": pages.LETTERS_SHOWN,
    }
    return _render(request, "dead_letters.html", context)


async def dead_letter(request: web.Request) -> web.Response:
    runtime = request.app[CONSOLE].runtime
    text = request.match_info["letter_id"]
    found = (
        await runtime.store.dead_letter(int(text)) if text.isdigit() and len(text) < 19 else None
    )
    if found is None:
        return _render(
            request, "missing.html", {"message": f"There is no dead letter {text}."}, 404
        )
    return _render(request, "dead_letter.html", {"found": found})


# ---- replay ----------------------------------------------------------------------------------


def _selection(form: Any) -> tuple[DeadLetterFilter, str] | None:
    """The dead letters a replay form names, and how to say it; None when it names none."""
    ids = [int(v) for v in form.getall("id", []) if str(v).isdigit() and len(str(v)) < 19]
    reason = str(form.get("reason", "")).strip()[:200]
    if ids:
        chosen = sorted(set(ids))[:MAX_SELECTED]
        return DeadLetterFilter(ids=tuple(chosen)), f"{len(chosen)} selected dead letter(s)"
    if reason:
        return DeadLetterFilter(reason=reason), f"every dead letter with reason {reason}"
    return None


async def replay(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    session = _session(request)
    form = await request.post()
    if not csrf_ok(session, form.get("csrf")):
        log.warning("console_replay_refused", user=session.user, client=_client(request))
        raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
    chosen = _selection(form)
    if chosen is None:
        return _render(
            request,
            "missing.html",
            {"message": "Nothing to replay: select dead letters or a reason."},
            400,
        )
    which, described = chosen
    runtime = console.runtime
    if form.get("confirm") != "yes":
        return await _confirm(request, runtime, which, described)
    outcome = await runtime.store.replay(which, remapper(runtime.config), runtime.clock())
    runtime.wake_delivery(outcome.messages)
    log.info(
        "console_replay",
        user=session.user,
        client=_client(request),
        selection=described,
        ids=list(which.ids)[:50],
        reason=which.reason,
        replayed=outcome.replayed,
        still_dead=outcome.still_dead,
        messages=outcome.messages,
    )
    return _render(request, "replayed.html", {"outcome": outcome, "described": described})


#: Dead letters a confirmation lists (the count covers them all).
LISTED = 20


async def _confirm(
    request: web.Request, runtime: Runtime, which: DeadLetterFilter, described: str
) -> web.Response:
    """What a replay would take, before it does: the count and the first few letters."""
    first = await runtime.store.dead_letters(replace(which, limit=LISTED))
    if which.ids:
        count = len(await runtime.store.dead_letters(which))
    else:
        count = (await runtime.store.stats(runtime.clock())).dead_letters.get(which.reason or "", 0)
    context = {"letters": first, "count": count, "which": which, "described": described}
    return _render(request, "confirm.html", context)
