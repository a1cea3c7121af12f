"""The webhook endpoint: authenticate, bound, decode, map, commit, and only then answer.

``POST /webhooks/synap/{code}`` - one URL per Synap subscription, because most Synap bodies do not
name their event code. Answers (every error is JSON ``{"error", "detail"}``):

====  ===========================================================================
200   committed: ``{"accepted": true, "webhook_id", "messages"}`` (``messages``: newly stored,
      0 for a duplicate, as in the log; ``superseded`` when it replaced a held message)
202   committed as a dead letter: ``{"accepted": true, "dead_lettered": true, "reason"}``
      (also when ``meta.eventName`` names another code than the URL: ``event_name_mismatch``)
400   not JSON / not an object / undecodable body
401   missing or wrong Basic credentials (with ``WWW-Authenticate``)
413   body (after gzip inflation) over ``server.max_body_bytes``; not read past the limit
503   storage cannot commit, or intake is refusing (back-pressure, shutting down);
      with ``Retry-After``. Never a 2xx for something not committed.
====  ===========================================================================

One canonical log line per webhook: code, portal, messages, outcome, status, latency_ms.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from bridge import logs
from bridge.errors import InvalidPayloadError, StorageUnavailableError
from bridge.mapping import intake
from bridge.receive.auth import CHALLENGE, credentials_match
from bridge.receive.runtime import RUNTIME, Runtime

log = logs.get(__name__)

READ_CHUNK = 64 * 1024
RETRY_AFTER_SECS = 5


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
    outcome, response = await _handle(request, runtime, code, fields)
    latency = time.perf_counter() - started
    runtime.metrics.webhooks.labels(code=code, outcome=outcome).inc()
    runtime.metrics.request_seconds.observe(latency)
    log.info(
        "webhook",
        code=code,
        outcome=outcome,
        status=response.status,
        latency_ms=round(latency * 1000, 2),
        **fields,
    )
    return response


# C901: the request's steps in order (auth, refusal, read, map, store, answer), each returning
# its outcome; the receive package's one error-answer path takes the refusals out of it.
async def _handle(  # noqa: C901
    request: web.Request, runtime: Runtime, code: str, fields: dict[str, Any]
) -> tuple[str, web.Response]:
    config = runtime.config
    password = config.auth.password
    if password is not None and not credentials_match(
        request.headers.get("Authorization"), config.auth.username, password.get_secret_value()
    ):
        return "unauthorized", error(
            401, "unauthorized", "missing or wrong credentials", {"WWW-Authenticate": CHALLENGE}
        )
    refusal = runtime.refusal()
    if refusal is not None:
        fields["reason"] = refusal
        return "refused", unavailable("unavailable", refusal)
    limit = config.server.max_body_bytes
    try:
        raw = await read_limited(request, limit)
    except InvalidPayloadError as exc:
        refused = error(400, exc.code, exc.detail)
        refused.force_close()  # the rest of the stream is unreadable: no keep-alive on it
        return "invalid", refused
    if raw is None:
        return "too_large", error(
            413, "payload_too_large", f"the body is larger than {limit} bytes"
        )
    received_at = runtime.clock()
    try:
        result = intake.process(code, raw, received_at, config, request.query.get("portal"))
    except InvalidPayloadError as exc:
        refused = error(400, exc.code, exc.detail)
        refused.force_close()  # the rest of the stream is unreadable: no keep-alive on it
        return "invalid", refused
    fields["portal"] = result.webhook.portal_id
    for reason in result.trimmed:
        log.warning("message_trimmed", code=code, reason=reason)
    try:
        receipt = await runtime.store.enqueue(result.webhook, result.messages, result.dead)
    except StorageUnavailableError as exc:
        fields["error"] = str(exc)
        return "unavailable", unavailable("storage_unavailable", "the bridge cannot store now")
    fields.update(webhook_id=receipt.webhook_id, messages=receipt.stored)
    if receipt.duplicates:
        fields["duplicates"] = receipt.duplicates
    if receipt.superseded:
        fields["superseded"] = receipt.superseded
    if result.dead is not None:
        runtime.metrics.dead_lettered.labels(reason=result.dead.reason).inc()
        fields.update(reason=result.dead.reason, detail=result.dead.detail)
        body = {
            "accepted": True,
            "dead_lettered": True,
            "webhook_id": receipt.webhook_id,
            "reason": result.dead.reason,
            "detail": result.dead.detail,
        }
        return "dead_lettered", answer(body, 202)
    runtime.metrics.enqueued.inc(receipt.stored)
    runtime.wake_delivery(receipt.stored + receipt.superseded)
    reply: dict[str, Any] = {
        "accepted": True,
        "webhook_id": receipt.webhook_id,
        "messages": receipt.stored,
    }
    if receipt.superseded:
        reply["superseded"] = receipt.superseded
    duplicate = receipt.duplicates and not (receipt.stored or receipt.superseded)
    return ("duplicate" if duplicate else "accepted"), answer(reply)
