"""What the serving process says about itself, recorded where the operator commands read it.

``stats`` runs in another process with its own environment: judging "dry-run" from the CLI's
configuration printed ``dry_run_waiting: 46`` for a live bridge whose write key the CLI did not
have. So ``serve`` records its own truth in the store (table ``service_state``, one row per
process, ``host:pid``): its version, readiness and each destination's mode (live or dry-run),
pause, last status and error. It writes at start, whenever that changes (looked at every
second) and at least every :data:`HEARTBEAT_SECS`, so a row younger than :data:`ALIVE_SECS`
is a process alive now; on PostgreSQL the rows are the replicas, timed by the database's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bridge import __version__, logs
from bridge.errors import StorageUnavailableError
from bridge.receive.health import readiness_problems
from bridge.receive.runtime import RUNTIME, Runtime
from bridge.store import ServiceState

log = logs.get(__name__)

LOOK_EVERY_SECS = 1.0
HEARTBEAT_SECS = 10.0
#: A record younger than this is a process serving now (three heartbeats).
ALIVE_SECS = 3 * HEARTBEAT_SECS


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def snapshot(runtime: Runtime, started_at: float) -> dict[str, Any]:
    """The record: nothing secret (no key, no URL), only what an operator needs to know."""
    config = runtime.config
    if runtime.delivery is not None:
        destinations = [status.as_dict() for status in runtime.delivery.statuses()]
    else:
        dry = set(config.dry_run_destinations)
        names = ["default", *config.routing.destinations]
        destinations = [{"name": n, "mode": "dry-run" if n in dry else "live"} for n in names]
    problems = readiness_problems(runtime)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "started_at": started_at,
        "ready": not problems,
        "problems": problems,
        "destinations": destinations,
    }


async def record_loop(runtime: Runtime, process: str, started_at: float) -> None:
    last: str | None = None
    written = 0.0
    while True:
        document = json.dumps(snapshot(runtime, started_at), sort_keys=True)
        mono = time.monotonic()
        if document != last or mono - written >= HEARTBEAT_SECS:
            try:
                await runtime.store.put_service_state(process, document, runtime.clock())
            except StorageUnavailableError as exc:  # /readyz says so; try again next round
                log.debug("service_state_not_recorded", error=str(exc))
            else:
                last, written = document, mono
        await asyncio.sleep(LOOK_EVERY_SECS)


async def context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp ``cleanup_ctx``: record while serving (after the store and the delivery start)."""
    runtime = app[RUNTIME]
    process, started_at = process_name(), runtime.clock()
    task = asyncio.create_task(record_loop(runtime, process, started_at), name="service-state")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # The store is still open (cleanup runs backwards): say this process is gone.
        final = {**snapshot(runtime, started_at), "stopped": True}
        with contextlib.suppress(StorageUnavailableError):
            await runtime.store.put_service_state(process, json.dumps(final), runtime.clock())


def alive(states: list[ServiceState]) -> list[ServiceState]:
    """The processes serving now: recorded lately and not stopped."""
    return [s for s in states if s.age_secs < ALIVE_SECS and not s.state.get("stopped")]
