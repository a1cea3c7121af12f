"""``synap-bridge serve``: run the app until SIGTERM/SIGINT, reload on SIGHUP.

Shutdown order (aiohttp's documented one, plus systemd): ``STOPPING=1`` and intake refusal
first (``/readyz`` fails, new webhooks get 503), then the listening sockets close, requests in
flight finish (up to ``shutdown.grace_secs``), then the delivery task finishes or hands back its
batch, then the store closes. A SIGKILL at any point loses nothing acknowledged: claims expire
and go out again after restart with the same messageIds.

One ``serve`` per SQLite database (PostgreSQL runs replicas instead): the lock
(:mod:`bridge.store.sqlite.lock`) is taken before anything else; a second ``serve`` logs
``database_in_use`` and exits with :data:`EX_DATABASE_IN_USE` (75), which the systemd unit lists
in ``RestartPreventExitStatus=``.

SIGHUP reloads the configuration (:mod:`bridge.reload` says what applies in place and what
needs a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time

from aiohttp import web

from bridge import __version__, logs
from bridge import config as config_module
from bridge.app import build_app, metrics_app
from bridge.config import Config
from bridge.console import listener as console
from bridge.errors import ConfigError, StorageUnavailableError
from bridge.receive import malformed
from bridge.receive.connections import ConnectionGuard, GuardedSite, fit_to_descriptors
from bridge.receive.runtime import RUNTIME
from bridge.reload import reload
from bridge.store.factory import DatabaseInUseError, describe, serve_guard
from bridge.systemd import Notifier, watchdog_loop

log = logs.get(__name__)

#: Another serve holds the database (EX_TEMPFAIL): retrying at once cannot help, so the unit's
#: ``RestartPreventExitStatus=`` lists it and systemd does not restart in a loop.
EX_DATABASE_IN_USE = 75
# The cyclic collector's youngest generation runs after this many net container allocations
# (CPython's default is 700). A webhook allocates a few thousand short-lived dicts and lists that
# reference counting frees; at 700 the collector ran a few times per webhook over the ~64
# requests in flight. docs/benchmarks.md (Notes, issue 16) has the measurement.
GC_YOUNG_THRESHOLD = 50_000


async def serve(config: Config, config_path: str | None) -> int:
    problems = [config.listen_problem(), *config_module.placeholder_secrets(config)]
    if any(problems):
        raise ConfigError([problem for problem in problems if problem])
    # Before the lock and the store: a serve that cannot listen leaves no new database behind.
    for port in (config.server.port, config.metrics.port):
        error = bind_problem(config.server.host, port) if port else None
        if error is not None:
            log.error("cannot_listen", host=config.server.host, port=port, error=error)
            return 1
    lock = serve_guard(config.storage)  # one serve per SQLite file; none on PostgreSQL
    try:
        lock.acquire()
    except DatabaseInUseError as exc:
        log.error(
            "database_in_use",
            path=str(config.storage.path),
            lock=str(exc.lock_path),
            holder_pid=exc.holder or None,
            detail=str(exc),
        )
        return EX_DATABASE_IN_USE
    except OSError as exc:
        log.error("storage_unavailable", error=str(exc), path=str(config.storage.path))
        return 1
    try:
        return await _serve(config, config_path)
    finally:
        lock.release()


def bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (as the server will bind it), or None."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return str(exc)
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return str(exc)
    return None


def tune_gc() -> None:
    """Collect the youngest generation less often once serving (see GC_YOUNG_THRESHOLD).

    Only the first threshold changes: older generations keep CPython's ratios.
    """
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _serve(config: Config, config_path: str | None) -> int:
    notifier = Notifier.from_environ()
    mapping = "process" if config.mapper.process else "inline"
    app = build_app(config, mapping=mapping, config_path=config_path)
    runtime = app[RUNTIME]
    # Signals are ours before anything can be seen from outside: a SIGTERM sent as soon as the
    # "listening" line appears must stop the bridge gracefully, not kill it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload, runtime, config_path, notifier)
    runner = make_runner(app, config)
    try:
        await runner.setup()
    except StorageUnavailableError as exc:  # database_corrupt names itself
        log.error(exc.code, error=str(exc), path=describe(config.storage))
        return 1
    log.info(
        "started",
        version=__version__,
        config=str(config_module.config_path(config_path, os.environ)),
        store=describe(config.storage),
        destinations={d.name: d.mode for d in runtime.delivery.statuses()}
        if runtime.delivery is not None
        else {},
    )
    runners = [runner]
    limit = fit_to_descriptors(config.server.max_connections)
    guard = ConnectionGuard(
        limit,
        config.server.header_timeout_secs,
        runtime.metrics,
        runtime.throttle,
        per_client=min(limit, config.server.per_client_connections()),
        exempt=config.server.trusted_proxies,
        max_age=config.server.connection_max_age_secs,
    )
    try:
        await GuardedSite(runner, guard, config.server.host, config.server.port).start()
        if config.metrics.enabled and config.metrics.port is not None:
            side = make_runner(metrics_app(runtime), config)
            await side.setup()
            await GuardedSite(side, guard, config.server.host, config.metrics.port).start()
            runners.append(side)
        for address in (addr for r in runners for addr in r.addresses):
            log.info("listening", host=address[0], port=address[1], dry_run=config.dry_run)
        runners.extend(r for r in [await console.start(runtime)] if r is not None)
        tune_gc()
        notifier.ready()
        pinger = asyncio.create_task(watchdog_loop(notifier, healthy=runtime.stages_healthy))
        await stop.wait()
        log.info("stopping", grace_secs=config.shutdown.grace_secs)
        notifier.stopping()
        runtime.stopping = True
        runtime.shutdown_deadline = time.monotonic() + config.shutdown.grace_secs
        pinger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pinger
    except OSError as exc:
        log.error("cannot_listen", host=config.server.host, error=str(exc))
        return 1
    finally:
        for each in reversed(runners):
            await each.cleanup()
    log.info("stopped")
    return 0


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The runner with the connection time bounds (the count is :class:`ConnectionGuard`'s).

    aiohttp's keep-alive timer starts when a connection opens and closes it when no complete
    request head has arrived by then, so ``keepalive_timeout`` is the header timeout (and the
    idle keep-alive one); ``lingering_time`` bounds draining a body the handler did not read
    (401, 503). The handler bounds the body it reads (``server.body_timeout_secs``).
    """
    malformed.install()  # aiohttp's parser errors: throttled, without the bytes they quote
    return web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=config.shutdown.grace_secs,
        access_log=None,
        keepalive_timeout=config.server.header_timeout_secs,
        lingering_time=config.server.body_timeout_secs,
    )
