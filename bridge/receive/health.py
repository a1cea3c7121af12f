"""``/healthz`` (alive), ``/readyz`` (ready for webhooks) and ``/metrics`` (Prometheus).

Liveness is only "the event loop answers": restarting a process because Segment is down would
not help. Readiness fails when storage is not writable, intake is refusing (back-pressure or
shutting down) or the delivery task is not running: a load balancer then stops sending. Each of
these is state kept by the background refresh (:mod:`bridge.receive.backpressure`) and by the
webhook's commits: a probe costs no query and no write, however often it comes.
"""

from __future__ import annotations

import contextlib

from aiohttp import web

from bridge.errors import StorageUnavailableError
from bridge.receive.answers import answer
from bridge.receive.auth import guard
from bridge.receive.runtime import RUNTIME, Runtime

STORAGE_UNAVAILABLE = "storage unavailable"


async def healthz(request: web.Request) -> web.Response:  # noqa: ARG001 - aiohttp's handler signature
    return answer({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    problems = readiness_problems(runtime)
    if problems:
        return answer({"status": "unready", "problems": problems}, status=503)
    warnings = delivery_warnings(runtime)
    return answer({"status": "ready", **({"warnings": warnings} if warnings else {})})


def delivery_warnings(runtime: Runtime) -> list[str]:
    """What is wrong downstream while intake works: a destination refusing its write key.

    Not a readiness problem on purpose: every replica shares the key, so an unready answer
    would take the whole fleet out of the load balancer and turn a wrong key (which the queue
    waits out, losing nothing) into refused webhooks. The metric
    ``synap_bridge_destination_refused`` and the alert ``SynapBridgeWriteKeyRefused`` say it
    instead, and ``/readyz`` lists it here.
    """
    if runtime.delivery is None:
        return []
    return [
        f"destination {status.name!r}: Segment refuses the write key (HTTP {status.last_status})"
        for status in runtime.delivery.statuses()
        if status.refused
    ]


def readiness_problems(runtime: Runtime) -> list[str]:
    """Why the bridge is not ready (empty: ready), for ``/readyz`` and ``synap_bridge_ready``.

    Cheap: the storage verdict is the periodic probe's cached result, never a write per call.
    """
    problems: list[str] = []
    if runtime.stopping:
        problems.append("shutting down")
    if runtime.storage_problem is not None:
        # Never the error itself: /readyz answers anyone, and the error may name hosts, users
        # or paths (a PostgreSQL connection error). The log line storage_not_writable has it.
        problems.append(STORAGE_UNAVAILABLE)
    if runtime.backpressure:
        problems.append(runtime.backpressure)
    if not runtime.delivering:
        problems.append("delivery task not running")
    return problems


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    settings = runtime.config.metrics
    refused = guard(request, settings.username or "", settings.password)
    if refused is not None:
        return refused
    now = runtime.clock()
    # On a storage error the gauges keep their last values; /readyz reports the problem.
    with contextlib.suppress(StorageUnavailableError):
        runtime.metrics.observe_backlog(await runtime.store.stats(now - 3600), now)
    runtime.metrics.observe_state(
        ready=not readiness_problems(runtime),
        delivering=runtime.delivering,
        refusing=runtime.refusal() is not None,
        paused=runtime.delivery.paused() if runtime.delivery is not None else {},
        refused=(
            {s.name: s.refused for s in runtime.delivery.statuses()}
            if runtime.delivery is not None
            else {}
        ),
    )
    return web.Response(
        body=runtime.metrics.render(), headers={"Content-Type": runtime.metrics.content_type}
    )
