"""When intake must refuse (503) so that the backlog and the disk stay within bounds.

Pure decision (:func:`refusal`) plus the small watcher loop that feeds it from the store and the
file system every ``interval`` seconds. Per-request checks would cost a query per webhook; a
refresh a second is cheap, and the bound it keeps is ``max_pending`` plus one second of intake.
Refusal lifts by itself once delivery catches up or disk is freed.

The same refresh runs the storage write probe, so ``/readyz`` reads a cached answer instead of
committing (and fsyncing) once per probe: a probe flood used to cut intake by two thirds.
A webhook's commit updates the same verdict (:func:`storage_failed`, :func:`storage_worked`), so
readiness lags a storage fault or its end by one ``interval`` at most, and only while no webhook
arrives.
"""

from __future__ import annotations

import asyncio

from bridge import logs
from bridge.config import StorageConfig
from bridge.errors import StorageUnavailableError
from bridge.receive.runtime import Runtime
from bridge.store.factory import free_disk_bytes

log = logs.get(__name__)


def refusal(pending: int, free_bytes: int | None, storage: StorageConfig) -> str | None:
    if pending >= storage.max_pending:
        return f"backlog of {pending} messages reached storage.max_pending ({storage.max_pending})"
    if free_bytes is not None and free_bytes < storage.min_free_bytes:
        return (
            f"free disk space {free_bytes} bytes is under storage.min_free_bytes "
            f"({storage.min_free_bytes})"
        )
    return None


def storage_failed(runtime: Runtime, exc: StorageUnavailableError) -> None:
    """Storage refused a write (the probe's or a webhook's commit): not ready from now on."""
    if runtime.storage_problem is None:
        log.error("storage_not_writable", error=str(exc))
    runtime.storage_problem = str(exc)


def storage_worked(runtime: Runtime) -> None:
    """Storage took a write (the probe's or a webhook's commit): ready again, as far as it goes."""
    if runtime.storage_problem is not None:
        log.info("storage_writable")
    runtime.storage_problem = None


async def check_storage(runtime: Runtime) -> None:
    """One write probe; its result is what ``/readyz`` reports until the next one."""
    try:
        await runtime.store.check_writable()
    except StorageUnavailableError as exc:
        storage_failed(runtime, exc)
        return
    storage_worked(runtime)


async def refresh(runtime: Runtime) -> None:
    """One look at storage, the backlog and the disk; updates the runtime and the gauges."""
    await check_storage(runtime)
    now = runtime.clock()
    try:
        stats = await runtime.store.stats(now - 3600)
    except StorageUnavailableError as exc:
        runtime.backpressure = f"storage unavailable: {exc}"
        return
    runtime.metrics.observe_backlog(stats, now)
    storage = runtime.config.storage
    free = free_disk_bytes(storage)  # SQLite's disk; PostgreSQL's is the server's to watch
    # Webhooks kept but not mapped yet are backlog too (each becomes a message or more).
    reason = refusal(stats.pending + stats.in_flight + stats.unmapped, free, storage)
    if reason != runtime.backpressure:
        if reason:
            log.warning("intake_refusing", reason=reason)
        else:
            log.info("intake_accepting")
    runtime.backpressure = reason


async def watch(runtime: Runtime, interval: float) -> None:
    """Refresh every ``interval`` seconds; the app's start ran the first refresh already.

    Readiness and back-pressure are only as fresh as this loop, so nothing may end it: an
    unexpected error is logged and the next refresh runs as usual.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            await refresh(runtime)
        except Exception:
            log.exception("storage_watch_failed")
