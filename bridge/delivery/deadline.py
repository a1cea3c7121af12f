"""A total deadline for one blocking upload: connect, send and the whole answer.

Why: ``requests``' ``timeout`` bounds each socket operation, not the request. A Segment (or a
proxy) that trickles its answer one byte a second never trips a 15 s read timeout, so an upload
could hold its batch and its upload slot for as long as the peer liked. The awaiting side
stops waiting at the deadline (:mod:`bridge.delivery.loop`); this module makes the worker
thread stop too, so a stuck peer cannot pile up threads and connections: the connection pool
registers each connection an upload takes with the thread's current :class:`Deadline`, and
when it expires the watcher (one thread for all uploads) shuts the socket down (again every
:data:`ABORT_RETRY_SECS`, in case the socket was still connecting), so the blocked read fails
at once with a connection error.

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
import heapq
import itertools
import socket
import threading
import time
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
        self.done = False
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        _CURRENT.deadline = self
        WATCHER.watch(self, time.monotonic() + self.seconds)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _CURRENT.deadline = None
        with self._lock:
            self.done = True
            self._connections.clear()  # the watcher may hold this object until its time

    def attach(self, connection: Any) -> None:
        """``connection`` now carries this upload: abort it at the deadline."""
        with self._lock:
            self._connections.append(connection)
            expired = self.expired
        if expired:
            self._abort()

    def expire(self) -> bool:
        """The deadline has passed: abort the upload's sockets; False once it has finished."""
        with self._lock:
            if self.done:
                return False
            self.expired = True
        self._abort()
        return True

    def _abort(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            sock = getattr(connection, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class Watcher:
    """One daemon thread for every upload's deadline: a heap ordered by expiry time.

    Why not a thread per upload (as before): a drain starts an upload every few milliseconds,
    and each new thread cost a start-up hand-shake under the GIL for a thread that almost
    always just waited and left (docs/benchmarks.md). A finished deadline stays in the heap
    until its time comes (then it is dropped unread); at most one entry per upload started
    within the total timeout, each without its connections (cleared on exit).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline, at: float) -> None:
        """Call ``deadline.expire()`` at ``at`` (monotonic), and every
        :data:`ABORT_RETRY_SECS` after while the upload is still running."""
        with self._changed:
            heapq.heappush(self._heap, (at, next(self._order), deadline))
            if self._thread is None:
                # Kept only once started: a start that fails (out of threads) is tried again by
                # the next upload, instead of every later deadline waiting for a thread that
                # never ran.
                thread = threading.Thread(target=self._run, name="upload-deadlines", daemon=True)
                thread.start()
                self._thread = thread
            if self._heap[0][2] is deadline:  # sooner than what the thread waits for
                self._changed.notify()

    def _run(self) -> None:
        while True:
            deadline = self._next_due()
            if deadline.expire():
                self.watch(deadline, time.monotonic() + ABORT_RETRY_SECS)

    def _next_due(self) -> Deadline:
        """Wait for the earliest deadline still running to pass, and take it off the heap."""
        with self._changed:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._changed.wait()
                    continue
                delay = self._heap[0][0] - time.monotonic()
                if delay <= 0:
                    return heapq.heappop(self._heap)[2]
                self._changed.wait(delay)


#: The one watcher (its thread starts with the first upload).
WATCHER = Watcher()


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
