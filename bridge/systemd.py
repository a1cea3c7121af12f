"""The systemd notify protocol: ``READY=1``, ``STOPPING=1``, ``WATCHDOG=1`` and ``STATUS=...``.

Why not a library: the protocol is one datagram per message, newline-separated ``KEY=value``
lines, sent over an ``AF_UNIX`` datagram socket whose address systemd puts in
``$NOTIFY_SOCKET`` (a leading ``@`` means the Linux abstract namespace). That fits in a few
lines we can read and test against a real socket, where a dependency would hide them.

Without ``$NOTIFY_SOCKET`` (a terminal, a container, the tests) every call does nothing, so the
server calls these unconditionally. A failed send is logged and swallowed: the service manager
going away must not take the bridge down with it (systemd kills a service that never reports
ready, which is the honest outcome of a broken socket).

The watchdog: with ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``,
the process it is meant for) and restarts the service if no ``WATCHDOG=1`` arrives in time.
:func:`watchdog_loop` pings from the event loop itself at half the interval, so a loop that hangs
(a blocking call, a livelock) stops the pings and gets the process restarted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from bridge import logs

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"

log = logs.get(__name__)


def socket_address(raw: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: a path, abstract bytes, or None."""
    if not raw:
        return None
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # systemd also allows vsock:..., which a service on the host never gets


def watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """The watchdog interval in microseconds if it is meant for process ``pid``, else None."""
    owner = environ.get(ENV_WATCHDOG_PID)
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get(ENV_WATCHDOG_USEC, ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """Talks to the service manager, or to nobody when not started by one."""

    def __init__(self, address: str | bytes | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._warned = False

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        environ = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        return cls(socket_address(environ.get(ENV_SOCKET)), watchdog_usec(environ, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the watchdog timeout), or None without a watchdog."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it went out."""
        if self.address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:  # once: a dead socket would otherwise log every 15 seconds
                self._warned = True
                log.warning("notify_failed", socket=_printable(self.address), error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The store is open and the port is bound: systemd may consider the service started."""
        fields = ["READY=1"] if status is None else ["READY=1", _status(status)]
        return self.send(*fields)

    def stopping(self) -> bool:
        """Shutdown has begun (intake stopped, draining)."""
        return self.send("STOPPING=1")

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """A SIGHUP reload has begun; send :meth:`ready` when it is done (or refused)."""
        usec = time.monotonic_ns() // 1000 if monotonic_usec is None else monotonic_usec
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.send(_status(text))


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split())


def _printable(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


async def watchdog_loop(
    notifier: Notifier,
    sleep: Callable[[float], Any] = asyncio.sleep,
    healthy: Callable[[], bool] = lambda: True,
) -> None:
    """Ping the watchdog from the event loop until cancelled; returns at once without one.

    ``healthy``: whether the other processes of the service are alive (the mapping child):
    while it says no, no ping is sent, so systemd restarts a service with a stuck stage.

    Run it as a task next to the server (``asyncio.create_task(watchdog_loop(n))``) and cancel
    it on shutdown. ``sleep`` is injectable so a test can drive the loop without waiting.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        if healthy():
            notifier.watchdog()
        await sleep(interval)
