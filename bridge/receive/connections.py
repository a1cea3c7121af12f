"""Bounds on connections: how many may be open at once, and how long one may take to ask.

With 1,100 idle connections under systemd's default 1,024 descriptors, accept() failed, no
webhook got through and the watchdog stopped. :class:`ConnectionGuard` wraps aiohttp's protocol
factory: past ``server.max_connections`` a new connection gets a 503 and is closed at once (not
queued), and :func:`fit_to_descriptors` keeps that number under the process's descriptor limit.
A new connection must also complete its first request head within ``header_timeout``: aiohttp
arms its keep-alive timer at connection time only since 3.14 (aio-libs/aiohttp#13681), and
before that a connection that never completed a head stayed open for good. Later heads on a
kept-alive connection fall under aiohttp's ``keepalive_timeout`` (serve sets it to the same
value), and a body under ``server.body_timeout_secs`` (the handler) and ``lingering_time``.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from bridge import logs
from bridge.metrics import Metrics
from bridge.receive.answers import raw_unavailable
from bridge.receive.throttle import Throttle

log = logs.get(__name__)

#: Descriptors kept for everything but client connections: SQLite (database, WAL, shared
#: memory, per connection), uploads to Segment, the listening sockets, stdio, the notify socket.
RESERVED_DESCRIPTORS = 64
#: The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). aiohttp's
#: 128 overflowed under a burst of 1,100 connections: the kernel then dropped handshakes that
#: TCP retried a second or three later, long after the burst.
BACKLOG = 1024
HEAD_END = b"\r\n\r\n"
REFUSAL = raw_unavailable("too_many_connections", "the bridge has too many open connections")


class ConnectionGuard:
    """Counts open connections across the bridge's listeners and refuses those over ``limit``."""

    def __init__(
        self, limit: int, header_timeout: float, metrics: Metrics, throttle: Throttle
    ) -> None:
        self.limit = limit
        self.header_timeout = header_timeout
        self.active = 0
        self.metrics = metrics
        self.throttle = throttle

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, factory)

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if self.active < self.limit:
            self.active += 1
            self.metrics.connections_open.set(self.active)
            return True
        self.metrics.connections_refused.inc()
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        stream = cast(asyncio.Transport, transport)
        stream.write(REFUSAL)
        stream.close()
        suppressed = self.throttle.allow("connection_refused")
        if suppressed is not None:
            log.warning(
                "connection_refused",
                open=self.active,
                limit=self.limit,
                peer=_peer(transport),
                suppressed=suppressed,
            )
        return False

    def release(self) -> None:
        self.active -= 1
        self.metrics.connections_open.set(self.active)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol behind the guard: created only for an admitted connection."""

    __slots__ = ("_deadline", "_factory", "_guard", "_inner", "_tail")

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a head end split across two reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.admit(transport):
            self._inner = self._factory()
            self._inner.connection_made(transport)
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_later(self._guard.header_timeout, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._inner is not None:
            self._guard.release()
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            seen = self._tail + data
            if HEAD_END in seen:
                self._deadline.cancel()
                self._deadline = None
            self._tail = seen[-(len(HEAD_END) - 1) :]
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections pass the guard. aiohttp takes no protocol factory, so
    ``start`` repeats TCPSite's own (its attributes included); the rest, above all the shutdown
    order in ``AppRunner.cleanup``, is aiohttp's."""

    def __init__(
        self, runner: web.BaseRunner, guard: ConnectionGuard, host: str, port: int
    ) -> None:
        super().__init__(runner, host, port, backlog=BACKLOG)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.wrap(server), self._host, self._port, backlog=self._backlog
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def fit_to_descriptors(wanted: int) -> int:
    """``wanted`` connections, or fewer when the descriptor limit cannot hold them.

    Raises the soft limit towards the hard one first (systemd's unit sets LimitNOFILE to match
    the default ``max_connections``); only if that is not enough is the cap lowered, with a log
    line saying so.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = max(1, soft - RESERVED_DESCRIPTORS)
    log.warning(
        "max_connections_lowered",
        configured=wanted,
        used=fitted,
        descriptor_limit=soft,
        detail="raise LimitNOFILE (ulimit -n) to allow server.max_connections",
    )
    return fitted


def _peer(transport: asyncio.BaseTransport) -> Any:
    peer = transport.get_extra_info("peername")
    return peer[0] if isinstance(peer, tuple) and peer else None
