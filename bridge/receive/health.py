"""``/healthz`` (alive), ``/readyz`` (ready for webhooks) and ``/metrics`` (Prometheus).

Liveness is only "the event loop answers": restarting a process because Segment is down would
not help. Readiness fails when storage is not writable, intake is refusing (back-pressure or
shutting down) or the delivery task is not running: a load balancer then stops sending.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from bridge.errors import StorageUnavailableError
from bridge.receive.auth import CHALLENGE, credentials_match
from bridge.receive.runtime import RUNTIME, Runtime


async def healthz(request: web.Request) -> web.Response:  # noqa: ARG001 - aiohttp's handler signature
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await readiness_problems(request.app[RUNTIME])
    if problems:
        return web.json_response({"status": "unready", "problems": problems}, status=503)
    return web.json_response({"status": "ready"})


async def readiness_problems(runtime: Runtime) -> list[str]:
    """Why the bridge is not ready (empty: ready); ``/readyz`` and ``synap_bridge_ready``."""
    problems: list[str] = []
    if runtime.stopping:
        problems.append("shutting down")
    try:
        await runtime.store.check_writable()
    except StorageUnavailableError as exc:
        problems.append(f"storage not writable: {exc}")
    if runtime.backpressure:
        problems.append(runtime.backpressure)
    if not runtime.delivering:
        problems.append("delivery task not running")
    return problems


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    guard = runtime.config.metrics
    if guard.password is not None and not credentials_match(
        request.headers.get("Authorization"),
        guard.username or "",
        guard.password.get_secret_value(),
    ):
        return web.json_response(
            {"error": "unauthorized", "detail": "missing or wrong credentials"},
            status=401,
            headers={"WWW-Authenticate": CHALLENGE},
        )
    now = runtime.clock()
    # On a storage error the gauges keep their last values; /readyz reports the problem.
    with contextlib.suppress(StorageUnavailableError):
        runtime.metrics.observe_backlog(await runtime.store.stats(now, now - 3600), now)
    runtime.metrics.observe_state(
        ready=not await readiness_problems(runtime),
        delivering=runtime.delivering,
        refusing=runtime.refusal() is not None,
        paused=runtime.delivery.paused() if runtime.delivery is not None else {},
    )
    return web.Response(
        body=runtime.metrics.render(), headers={"Content-Type": runtime.metrics.content_type}
    )
