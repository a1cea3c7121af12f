"""The composition root: builds the aiohttp application and owns the life cycle of its parts.

Start order (aiohttp ``cleanup_ctx``): store -> delivery task -> back-pressure watcher; shutdown
runs the same list backwards, so the store closes only after the delivery task has finished or
handed back its batch. Tests build the same app with an injected clock, store path and sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from bridge import logs, servicestate
from bridge.config import Config
from bridge.delivery.loop import Delivery
from bridge.delivery.sinks import Sink, build_sinks
from bridge.errors import StorageUnavailableError
from bridge.metrics import Metrics
from bridge.receive import backpressure, health
from bridge.receive import webhook as receive
from bridge.receive.answers import json_errors
from bridge.receive.runtime import RUNTIME, Runtime
from bridge.store import Store
from bridge.store.factory import open_store
from bridge.synap.codes import CODE_PATTERN

log = logs.get(__name__)

WEBHOOK_ROUTE = f"/webhooks/synap/{{code:{CODE_PATTERN}}}"


def build_app(
    config: Config,
    *,
    store: Store | None = None,
    sinks: Mapping[str, Sink] | None = None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
    watch_interval: float = 1.0,
) -> web.Application:
    runtime = Runtime(
        config=config,
        store=store if store is not None else open_store(config.storage),
        metrics=metrics or Metrics(),
        clock=clock,
    )
    app = _application(runtime)
    app.router.add_post(WEBHOOK_ROUTE, receive.webhook)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    if config.metrics.enabled and config.metrics.port is None:
        app.router.add_get("/metrics", health.metrics)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_delivery_context(sinks))
    app.cleanup_ctx.append(_watcher_context(watch_interval))
    app.cleanup_ctx.append(servicestate.context)
    return app


def metrics_app(runtime: Runtime) -> web.Application:
    """The separate metrics listener (``metrics.port``): only ``/metrics``, same runtime."""
    app = _application(runtime)
    app.router.add_get("/metrics", health.metrics)
    return app


def _application(runtime: Runtime) -> web.Application:
    """What every listener shares: the runtime, JSON error answers (no versions in ``Server``:
    :mod:`bridge.receive.answers` sets aiohttp's default)."""
    app = web.Application(middlewares=[json_errors])
    app[RUNTIME] = runtime
    return app


async def _storage(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.store.open()
    try:
        yield
    finally:
        await _log_left(runtime)
        await runtime.store.close()


async def _log_left(runtime: Runtime) -> None:
    """The stop line's figures: what waits in the store for the next start (or a replica)."""
    now = runtime.clock()
    try:
        stats = await runtime.store.stats(now, now)
    except StorageUnavailableError as exc:
        log.warning("left_unknown", error=str(exc))
        return
    log.info(
        "left",
        pending=stats.pending,
        in_flight=stats.in_flight,
        dead_letters=sum(stats.dead_letters.values()),
    )


def _delivery_context(
    sinks: Mapping[str, Sink] | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def delivery(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        config = runtime.config
        chosen = dict(sinks) if sinks is not None else build_sinks(config)
        for name, sink in chosen.items():
            if sink.dry_run:
                log.warning(
                    "dry_run",
                    destination=name,
                    detail="no write key: messages are logged and kept queued, not sent",
                )
        recovered = await runtime.store.recover(runtime.clock())
        if recovered:
            log.warning("claims_recovered", messages=recovered, detail="sent again, same ids")
        runtime.delivery = Delivery(
            runtime.store,
            chosen,
            config.delivery,
            clock=runtime.clock,
            metrics=runtime.metrics,
            retention_secs=config.storage.delivered_retention_secs,
            lease_secs=config.storage.lease_secs,
        )
        task = runtime.delivery_task = asyncio.create_task(runtime.delivery.run(), name="delivery")
        try:
            yield
        finally:
            await runtime.delivery.stop(runtime.grace_left())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return delivery


def _watcher_context(interval: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def watcher(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        await backpressure.refresh(runtime)
        task = asyncio.create_task(backpressure.watch(runtime, interval), name="backpressure")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return watcher
