"""A total deadline for one blocking upload: connect, send and the whole answer.

Why: ``requests``' ``timeout`` bounds each socket operation, not the request. A Segment (or a
proxy) that trickles its answer one byte a second never trips a 15 s read timeout, so an upload
could hold its batch and its upload slot for as long as the peer liked. The awaiting side
stops waiting at the deadline (:mod:`bridge.delivery.loop`); this module makes the worker
thread stop too, so a stuck peer cannot pile up threads and connections: the connection pool
registers each connection an upload takes with the thread's current :class:`Deadline`, and
when it expires a watcher shuts the socket down (again every :data:`ABORT_RETRY_SECS`, in case
the socket was still connecting), so the blocked read fails at once with a connection error.

Through a proxy configured in the environment (``HTTPS_PROXY``; requests then uses urllib3's
proxy manager, whose pools are not ours) connections are not registered: the loop's own wait
(the total deadline plus ``DEADLINE_GRACE_SECS``, :mod:`bridge.delivery.uploads`) still ends
the upload and hands the batch back, abandoning the daemon thread to its read timeout.

Use::

    with Deadline(30.0) as deadline:
        response = SESSION.post(...)    # raises a ConnectionError once aborted
    if deadline.expired: ...            # say why, not "connection reset"
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool

#: After the deadline, how often the watcher shuts the sockets down again (a socket that was
#: still connecting at the deadline gets its turn as soon as it exists).
ABORT_RETRY_SECS = 0.25

_CURRENT = threading.local()


class Deadline:
    """The deadline of the upload running in this thread (a context manager)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._done = threading.Event()

    def __enter__(self) -> Deadline:
        _CURRENT.deadline = self
        watcher = threading.Thread(target=self._watch, name="upload-deadline", daemon=True)
        watcher.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _CURRENT.deadline = None
        self._done.set()

    def attach(self, connection: Any) -> None:
        """``connection`` now carries this upload: abort it at the deadline."""
        with self._lock:
            self._connections.append(connection)
            expired = self.expired
        if expired:
            self._abort()

    def _watch(self) -> None:
        if self._done.wait(self.seconds):
            return
        with self._lock:
            self.expired = True
        while True:
            self._abort()
            if self._done.wait(ABORT_RETRY_SECS):
                return

    def _abort(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _attach(connection: Any) -> None:
    deadline: Deadline | None = getattr(_CURRENT, "deadline", None)
    if deadline is not None:
        deadline.attach(connection)


class _HTTPPool(HTTPConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _attach(connection)
        return connection


class _HTTPSPool(HTTPSConnectionPool):
    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        _attach(connection)
        return connection


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose pools register every connection with the current deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
