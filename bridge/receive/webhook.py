"""The webhook endpoint: authenticate, bound, commit the webhook as received, then answer.

``POST /webhooks/synap/{code}`` - one URL per Synap subscription, because most Synap bodies do not
name their event code. Keep first, judge after: nothing here reads the body's content. What it
says (not JSON, an unknown code, no user id, a lone surrogate...) is the mapping stage's
business (:mod:`bridge.mapper`), after the commit, so an authenticated body within the limits
is never refused for what it says. Answers (every error is JSON ``{"error", "detail"}``):

====  ===========================================================================
200   kept: ``{"accepted": true, "webhook_id": "wh_…"}``; mapping and delivery follow (while
      the mapping catches up, the body is read at its pace, up to 1 s later: receive.pacing)
400   a body that cannot be read (broken gzip/deflate or chunked encoding), or a client that
      hung up mid-body
401   missing or wrong Basic credentials (with ``WWW-Authenticate``)
408   the body did not arrive within ``server.body_timeout_secs`` (connection closed)
413   body (after gzip inflation) over ``server.max_body_bytes``; not read past the limit
503   storage cannot commit, or intake is refusing (back-pressure, shutting down);
      with ``Retry-After``. Never a 2xx for something not committed.
====  ===========================================================================

One canonical log line per webhook: code, webhook_id, outcome, status, latency_ms, client and,
for a refusal, the ``error`` code of the answer (the mapping stage logs the verdict). 401 lines
are throttled (one a second, with the count left out). A client that hangs up mid-body is one
``outcome=disconnected`` info line.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from bridge import logs
from bridge.config import ServerConfig
from bridge.errors import InvalidPayloadError, StorageUnavailableError
from bridge.receive import backpressure
from bridge.receive.answers import answer, error, unavailable
from bridge.receive.auth import guard
from bridge.receive.clients import client_address
from bridge.receive.runtime import RUNTIME, Runtime
from bridge.store import Webhook
from bridge.synap import codes as synap_codes

log = logs.get(__name__)

READ_CHUNK = 64 * 1024
UNKNOWN_CODE = "unknown"


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The (inflated) body, or None as soon as it proves longer than ``limit`` bytes.

    A body aiohttp cannot decode (``Content-Encoding: gzip`` over bytes that are not gzip, a
    broken chunked encoding) is the client's fault: InvalidPayloadError (400), not a 500.
    """
    declared = request.content_length
    if declared is not None and declared > limit and "Content-Encoding" not in request.headers:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
    except RequestPayloadError as exc:
        raise InvalidPayloadError("invalid_body", f"the body cannot be read: {exc}") from exc
    return b"".join(chunks)


async def webhook(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    started = time.perf_counter()
    code = request.match_info["code"]
    fields: dict[str, Any] = {}
    runtime.webhooks_in_flight += 1
    try:
        outcome, response = await _handle(request, runtime, code, fields)
    finally:
        runtime.webhooks_in_flight -= 1
    latency = time.perf_counter() - started
    runtime.metrics.webhook_received(_label(runtime, code, outcome), outcome)
    runtime.metrics.request_seconds.observe(latency)
    if outcome == "unauthorized":
        # Anyone can send these: one line a second at most, never a label of their choosing.
        suppressed = runtime.throttle.allow("unauthorized")
        if suppressed is None:
            return response
        fields["suppressed"] = suppressed
    level = logging.INFO
    if logs.enabled(level):  # the line's fields are not even gathered when nobody reads them
        client = client_address(request, runtime.config.server.trusted_proxies)
        latency_ms = round(latency * 1000, 2)
        status = response.status
        log.log(
            level,
            "webhook",
            code=code,
            outcome=outcome,
            status=status,
            latency_ms=latency_ms,
            client=client,
            **fields,
        )
    return response


def _label(runtime: Runtime, code: str, outcome: str) -> str:
    """The ``code`` label: a code the bridge knows, else ``unknown``, so that the label set
    stays bounded whatever URLs are posted; an unauthenticated request is never labelled by its
    path."""
    if outcome == "unauthorized":
        return UNKNOWN_CODE
    known = _known_codes(runtime.config.mapping.exam_results_released_code)
    return code if code in known else UNKNOWN_CODE


@functools.lru_cache(maxsize=8)
def _known_codes(released: str) -> frozenset[str]:
    """The codes a label may name, as a set built once per configured "released" code (a reload
    may change it) instead of a list built and scanned per webhook."""
    return frozenset(synap_codes.all_codes(released))


async def _handle(
    request: web.Request, runtime: Runtime, code: str, fields: dict[str, Any]
) -> tuple[str, web.Response]:
    config = runtime.config
    auth = config.auth
    refused = guard(request, auth.username, auth.password, auth.next_password)
    if refused is not None:
        fields["error"] = "unauthorized"
        return "unauthorized", refused
    refusal = runtime.refusal()
    if refusal is not None:
        fields["reason"] = refusal
        return "refused", unavailable("unavailable", refusal)
    if await runtime.pacer.turn():  # the mapping is catching up: at its pace, bounded
        runtime.metrics.intake_paced.inc()
        fields["paced"] = True
    raw = await _read_body(request, config.server, fields)
    if not isinstance(raw, bytes):
        return raw
    portal = request.query.get("portal")
    webhook = Webhook(code, portal[:200] if portal else None, runtime.clock(), raw)
    try:
        webhook_id = await runtime.store.keep(webhook, runtime.mapping_tag())
    except StorageUnavailableError as exc:
        backpressure.storage_failed(runtime, exc)
        fields.update(error="storage_unavailable", detail=str(exc))
        return "unavailable", unavailable("storage_unavailable", "the bridge cannot store now")
    backpressure.storage_worked(runtime)
    runtime.wake_mapping()
    fields["webhook_id"] = webhook_id
    return "accepted", answer({"accepted": True, "webhook_id": webhook_id})


async def _read_body(
    request: web.Request, server: ServerConfig, fields: dict[str, Any]
) -> bytes | tuple[str, web.Response]:
    """The body, or the outcome and answer that refuse it (400, 408, 413, or a gone client).

    The whole read shares one deadline (``server.body_timeout_secs``): a client that sends half
    a body and stops holds a connection for that long, not for as long as it likes. A body that
    is complete before the handler runs (the common case: head and body in one read) is taken
    from the buffer without a deadline, since nothing is left to wait for: an
    ``asyncio.timeout`` costs ~7 µs of the event loop's time per request to arm and disarm.
    """
    limit = server.max_body_bytes
    content = request.content
    if content.is_eof() and content.exception() is None:
        whole = content.read_nowait(-1)
        raw: bytes | None = whole if len(whole) <= limit else None
    else:
        try:
            async with asyncio.timeout(server.body_timeout_secs):
                raw = await read_limited(request, limit)
        except InvalidPayloadError as exc:
            return _refuse(fields, "invalid", 400, exc.code, exc.detail, close=True)
        except TimeoutError:
            detail = f"the body did not arrive within {server.body_timeout_secs} s"
            return _refuse(fields, "timeout", 408, "body_timeout", detail, close=True)
        except ConnectionError:
            # The client hung up mid-body: its fault, nobody reads this answer, no 5xx, no
            # traceback.
            detail = "the client closed the connection before the body was complete"
            return _refuse(fields, "disconnected", 400, "client_disconnected", detail, close=True)
    if raw is None:
        detail = f"the body is larger than {limit} bytes"
        return _refuse(fields, "too_large", 413, "payload_too_large", detail)
    return raw


def _refuse(
    fields: dict[str, Any],
    outcome: str,
    status: int,
    code: str,
    detail: str,
    *,
    close: bool = False,
) -> tuple[str, web.Response]:
    fields["error"] = code
    refused = error(status, code, detail)
    if close:
        refused.force_close()  # the rest of the stream is unreadable: no keep-alive on it
    return outcome, refused
