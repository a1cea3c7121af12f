"""The composition root: builds the aiohttp application and owns the life cycle of its parts.

Start order (aiohttp ``cleanup_ctx``): store -> delivery task -> mapping stage -> back-pressure
watcher; shutdown runs the same list backwards: intake has stopped by then, the mapping stage
maps what was kept, delivery sends what it can within the grace, and the store closes last.
The mapping stage runs in this process (``mapping="inline"``: tests, ``mapper.process: false``)
or in a child process that ``serve`` supervises (``mapping="process"``). Tests build the same
app with an injected clock, store path and sinks.
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
from bridge.mapper.stage import MappingStage, Report
from bridge.mapper.supervisor import MapperSupervisor
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
    mapping: str = "inline",
    config_path: str | None = None,
) -> web.Application:
    """``mapping``: ``inline`` (the stage runs here), ``process`` (a supervised child loaded
    from ``config_path`` and the environment) or ``none`` (webhooks stay unmapped: tests of
    intake alone)."""
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
    if mapping == "inline":
        app.cleanup_ctx.append(_inline_mapping)
    elif mapping == "process":
        app.cleanup_ctx.append(_mapping_process(config_path))
    elif mapping != "none":
        raise ValueError(f"mapping must be inline, process or none, not {mapping!r}")
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
    try:
        stats = await runtime.store.stats(since=runtime.clock())
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
            known_only=config.storage.url is not None,  # replicas: leave what others know
        )
        task = runtime.delivery_task = asyncio.create_task(runtime.delivery.run(), name="delivery")
        try:
            yield
        finally:
            if runtime.stopping:
                await _send_what_is_left(runtime)
            await runtime.delivery.stop(runtime.grace_left())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return delivery


#: While stopping, delivery goes on until nothing is left to send, or nothing has left for this
#: long (an outage, a pause, messages held for an exam's webhook): then what is left waits in the
#: database for the next start rather than holding the stop up for the whole grace.
STALLED_SECS = 1.0


async def _send_what_is_left(runtime: Runtime) -> None:
    """SIGTERM's last step before delivery stops: the mapping stage has mapped what intake kept;
    send it within what is left of the grace (dry-run destinations never send: not counted)."""
    store = runtime.store
    dry = runtime.config.dry_run_destinations
    best: int | None = None
    stalled_since = time.monotonic()
    while runtime.grace_left() > 0:
        try:
            stats = await store.stats(since=runtime.clock())
            left = stats.pending + stats.in_flight - (await store.count_open(dry) if dry else 0)
        except StorageUnavailableError:
            return
        if left <= 0:
            return
        if best is None or left < best:
            best, stalled_since = left, time.monotonic()
        elif time.monotonic() - stalled_since > STALLED_SECS:
            log.info("stopping_with_messages_left", messages=left)
            return
        runtime.wake_delivery(left)
        await asyncio.sleep(0.05)


def reported(runtime: Runtime, report: Report) -> None:
    """A mapping round's outcome: the metrics, and delivery woken for the new messages."""
    metrics = runtime.metrics
    if runtime.config.mapper.pace_intake:
        runtime.pacer.reported(report.mapped, report.catching_up)
    if report.mapped:
        dead = sum(report.dead.values())
        metrics.mapped.labels("dead_lettered").inc(dead)
        metrics.mapped.labels("mapped").inc(report.mapped - dead)
    for reason, count in report.dead.items():
        metrics.dead_lettered.labels(reason=reason).inc(count)
    if report.failures:
        metrics.mapping_failures.inc(report.failures)
    if report.yielded_secs > 0:
        metrics.mapping_yielded.inc(report.yielded_secs)
    if report.messages:
        metrics.enqueued.inc(report.messages)
    if report.messages or report.superseded:
        runtime.wake_delivery(report.messages + report.superseded)


async def _inline_mapping(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    stage = MappingStage.configured(
        runtime.store,
        lambda: runtime.config,
        clock=runtime.clock,
        on_report=lambda report: reported(runtime, report),
    )
    runtime.mapping = stage
    runtime.mapping_waker = stage.wake
    listen = getattr(runtime.store, "listen", None)
    if listen is not None:
        await listen(stage.wake)
    task = asyncio.create_task(stage.run(), name="mapping")
    try:
        yield
    finally:
        runtime.mapping_waker = None
        await stage.stop(time.monotonic() + runtime.grace_left())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await stage.drain(time.monotonic() + runtime.grace_left())


def _mapping_process(
    config_path: str | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def mapping(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        supervisor = MapperSupervisor(
            config_path,
            on_report=lambda report: reported(runtime, report),
            on_restart=lambda: runtime.metrics.stage_restarts.labels("mapper").inc(),
            nice=runtime.config.mapper.nice,
        )
        runtime.supervisor = supervisor
        await supervisor.start(ready_within=runtime.config.storage.busy_timeout_secs + 10)
        runtime.mapping_waker = supervisor.wake
        try:
            yield
        finally:
            runtime.mapping_waker = None
            await supervisor.stop(runtime.grace_left())

    return mapping


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
