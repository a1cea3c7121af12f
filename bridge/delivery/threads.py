"""Run a blocking call in a daemon thread and await it from the event loop.

Why not a ThreadPoolExecutor for Segment uploads: its workers are joined when the interpreter
exits, so an upload stuck on a silent network would hold a stopping bridge for up to
``segment.timeout_secs`` after SIGTERM's grace period, past systemd's stop timeout. An upload
abandoned at exit loses nothing (its batch was handed back, or its lease expires and the same
messageIds go out again), so the thread may die with the process. One thread per batch costs
tens of microseconds against an upload of milliseconds; the requests connection pool is shared
across threads, so connections are still reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def run_in_daemon_thread(name: str, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle_result(value: T) -> None:
        if not future.done():
            future.set_result(value)

    def settle_error(exc: BaseException) -> None:
        if not future.done():
            future.set_exception(exc)

    def target() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:  # handed to the awaiting task, not lost in the thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle_error, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle_result, value)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future
