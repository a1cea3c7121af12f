"""Run a blocking call on a daemon worker thread and await it from the event loop.

Why not a ThreadPoolExecutor for Segment uploads: its workers are joined when the interpreter
exits, so an upload stuck on a silent network would hold a stopping bridge for up to
``segment.timeout_secs`` after SIGTERM's grace period, past systemd's stop timeout. An upload
abandoned at exit loses nothing (its batch was handed back, or its lease expires and the same
messageIds go out again), so the thread may die with the process.

Why a pool of daemon threads rather than a new thread per call (as before): a drain uploads
every few milliseconds, and ``Thread.start`` blocks the event loop until the new thread has
been scheduled and has signalled, under the GIL; in the drain's profile that wait was about a
fifth of the event loop's samples (docs/benchmarks.md). A call that finds no idle worker starts
one, so a stuck upload never delays another; a worker idle for :data:`IDLE_SECS` leaves, so the
threads stay bounded by the calls in flight at once. The requests connection pool is shared
across threads, so connections are reused either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

#: A worker without a call for this long leaves.
IDLE_SECS = 30.0


class DaemonPool:
    """Daemon worker threads named ``name``, started on demand, leaving when idle."""

    def __init__(self, name: str, idle_secs: float = IDLE_SECS) -> None:
        self.name = name
        self._idle_secs = idle_secs
        self._calls: queue.SimpleQueue[Callable[[], Callable[[], None]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Workers free for a call and not yet promised one (a call put in the queue takes one).
        self._idle = 0
        self.workers = 0

    def submit(self, call: Callable[[], Callable[[], None]]) -> None:
        """Run ``call`` (which must not raise) on an idle worker, or on a new one.

        ``call`` returns its hand-back (say, settling a future): the worker runs it only once it
        counts itself idle again, so whoever reacts to the result and submits the next call
        finds this worker free instead of starting another thread."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._calls.put(call)
                return
            self.workers += 1
        # The worker starts before the call is queued: if it cannot start (the process is out
        # of threads), the caller gets the error and the call is gone, rather than left queued
        # to run later, long after its caller handed the batch back.
        try:
            threading.Thread(target=self._work, name=self.name, daemon=True).start()
        except BaseException:
            with self._lock:
                self.workers -= 1
            raise
        self._calls.put(call)

    def _work(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=self._idle_secs)
            except queue.Empty:
                with self._lock:
                    # An empty queue under the lock: no call is promised to a worker, so this
                    # one is among the idle ones and may leave.
                    if self._calls.empty():
                        self._idle -= 1
                        self.workers -= 1
                        return
                continue
            hand_back = call()
            with self._lock:
                self._idle += 1
            hand_back()


_POOLS: dict[str, DaemonPool] = {}


def _hand_back(loop: asyncio.AbstractEventLoop, settle: Callable[[Any], None], value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(settle, value)


def run_in_daemon_thread(name: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle_result(value: T) -> None:
        if not future.done():
            future.set_result(value)

    def settle_error(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def call() -> Callable[[], None]:
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, not lost in the thread
            return partial(_hand_back, loop, settle_error, exc)
        return partial(_hand_back, loop, settle_result, value)

    pool = _POOLS.get(name)
    if pool is None:
        pool = _POOLS[name] = DaemonPool(name)
    pool.submit(call)
    return future
