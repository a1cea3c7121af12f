"""Every answer the HTTP edge gives that is not a success: one JSON shape, one path.

``{"error": <short code>, "detail": <sentence>}`` for 400/401/404/405/408/413/503, whether the
webhook handler chose it or aiohttp raised it (unknown path, wrong method): :func:`error` builds
them all and :func:`json_errors` (the middleware) turns aiohttp's exceptions into it. A refusal
nobody asked about still leaves a trace: 404 and 405 are logged, throttled so that a scanner
cannot turn them into log volume. The ``Server`` header names the product, never versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp import web_response as aiohttp_web_response

from bridge import logs
from bridge.errors import StorageUnavailableError
from bridge.receive.clients import client_address
from bridge.receive.runtime import RUNTIME

log = logs.get(__name__)

RETRY_AFTER_SECS = 5
SERVER_HEADER = "synap-bridge"
#: Headers of an aiohttp exception worth keeping in the JSON answer.
KEPT_HEADERS = ("Allow", "WWW-Authenticate")


def answer(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer, encoded by orjson (``web.json_response`` uses the slower stdlib json)."""
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return answer({"error": code, "detail": detail}, status, headers)


def unavailable(code: str, detail: str) -> web.Response:
    return error(503, code, detail, {"Retry-After": str(RETRY_AFTER_SECS)})


def raw_unavailable(code: str, detail: str) -> bytes:
    """The same 503 as bytes, for a connection refused before aiohttp sees it."""
    body = orjson.dumps({"error": code, "detail": detail})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_SECS}\r\n"
        f"Server: {SERVER_HEADER}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


# aiohttp would say ``Python/3.x aiohttp/3.y`` to anyone. Every answer, the application's and
# the ones aiohttp writes itself before any application sees the request (a request line or
# header it cannot parse: 400), takes this module default when it has no ``Server`` header of
# its own; aiohttp offers no setting for it. It replaced an ``on_response_prepare`` signal that
# set the same header on the application's answers: the signal cost an await per answer for
# nothing the default does not already do. tests/test_refusals.py checks both kinds of answer.
aiohttp_web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined] # not exported


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Every error answer is JSON, including aiohttp's own 404/405, and no exception escapes."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        slug = (exc.reason or "error").lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k in KEPT_HEADERS}
        _log_refusal(request, exc.status, slug)
        return error(exc.status, slug, f"{request.method} {request.path}: {exc.reason}", headers)
    except StorageUnavailableError as exc:
        log.error("storage_unavailable", path=request.path, error=str(exc))
        return unavailable("storage_unavailable", "the bridge cannot store now")
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return error(500, "internal_error", "an unexpected error; see the bridge's log")


def _log_refusal(request: web.Request, status: int, slug: str) -> None:
    runtime = request.app[RUNTIME]
    suppressed = runtime.throttle.allow(slug)
    if suppressed is None:
        return
    log.info(
        "refused",
        status=status,
        error=slug,
        method=request.method,
        path=request.path[:200],
        client=client_address(request, runtime.config.server.trusted_proxies),
        suppressed=suppressed,
    )
