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

One client cannot take every slot: 2,000 keep-alive sockets from one address, each asking
``/healthz`` every 8 s, held all of them, and every real webhook got a 503. So each client
address has a share (``server.max_connections_per_client``, a tenth of the cap unless set;
proxies in ``server.trusted_proxies`` are exempt, they carry everyone), and a connection is
closed after its answer once it is ``server.connection_max_age_secs`` old, so requests that
keep re-arming aiohttp's keep-alive timer do not keep a slot for good.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from collections import Counter
from collections.abc import Callable, Sequence
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
CLIENT_REFUSAL = raw_unavailable(
    "too_many_connections_from_client", "this client has too many open connections"
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConnectionGuard:
    """Counts open connections across the bridge's listeners and refuses those over ``limit``,
    or over ``per_client`` from one address (unless it is in ``exempt``)."""

    def __init__(
        self,
        limit: int,
        header_timeout: float,
        metrics: Metrics,
        throttle: Throttle,
        *,
        per_client: int | None = None,
        exempt: Sequence[Network] = (),
        max_age: float | None = None,
    ) -> None:
        self.limit = limit
        self.per_client = per_client if per_client is not None else limit
        self.exempt = tuple(exempt)
        self.max_age = max_age
        self.header_timeout = header_timeout
        self.active = 0
        self.by_client: Counter[Any] = Counter()
        self.metrics = metrics
        self.throttle = throttle

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Guarded(self, factory)

    def admit(self, transport: asyncio.BaseTransport) -> tuple[bool, Any]:
        """Whether admitted, and the client counted against its share (None: exempt)."""
        peer = _peer(transport)
        client = None if self._exempt(peer) else peer
        if self.active < self.limit and (
            client is None or self.by_client[client] < self.per_client
        ):
            self.active += 1
            if client is not None:
                self.by_client[client] += 1
            self.metrics.connections_open.set(self.active)
            return True, client
        whole = self.active >= self.limit
        self.metrics.connections_refused.inc()
        # A cast, not isinstance: uvloop's transports do not derive from asyncio's classes.
        stream = cast(asyncio.Transport, transport)
        stream.write(REFUSAL if whole else CLIENT_REFUSAL)
        stream.close()
        kind = "connection_refused" if whole else "client_connections_refused"
        suppressed = self.throttle.allow(kind)
        if suppressed is not None:
            log.warning(
                kind,
                open=self.active,
                limit=self.limit if whole else self.per_client,
                peer=peer,
                suppressed=suppressed,
            )
        return False, None

    def release(self, client: Any) -> None:
        self.active -= 1
        if client is not None:
            self.by_client[client] -= 1
            if self.by_client[client] <= 0:
                del self.by_client[client]
        self.metrics.connections_open.set(self.active)

    def _exempt(self, peer: Any) -> bool:
        if not self.exempt or not isinstance(peer, str):
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol behind the guard: created only for an admitted connection."""

    __slots__ = (
        "_aged",
        "_client",
        "_deadline",
        "_factory",
        "_guard",
        "_inner",
        "_tail",
        "_transport",
    )

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._client: Any = None
        self._deadline: asyncio.TimerHandle | None = None
        self._aged: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._tail = b""  # the last bytes seen, for a head end split across two reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admitted, client = self._guard.admit(transport)
        if not admitted:
            return
        self._client, self._transport = client, transport
        self._inner = self._factory()
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout, transport.close)
        if self._guard.max_age is not None:
            self._aged = loop.call_later(self._guard.max_age, self._retire)

    def _retire(self) -> None:
        """Old enough: closed now if idle, else by aiohttp after the answer in progress.

        aiohttp's ``close()`` ends a handler's loop after its answer, but one waiting for the
        next request would only stop waiting, leaving the socket open: an idle connection (its
        ``_waiter`` set: aiohttp's own state, read defensively) is closed here instead.
        """
        if getattr(self._inner, "_waiter", None) is not None or not hasattr(self._inner, "close"):
            if self._transport is not None:
                self._transport.close()
            return
        self._inner.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._aged is not None:
            self._aged.cancel()
        if self._inner is not None:
            self._guard.release(self._client)
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
