"""The arrivals latch: how the receiver tells the delivery loop that new messages were committed.

Why a latch with a threshold and not a plain event: while a partial batch gathers companions,
claiming on every commit cost a write transaction (an fsync) per intake round for a handful of
messages, a quarter of the writer thread's time under intake load (docs/benchmarks.md). So the
loop says how many arrivals it *wants* (:meth:`Arrivals.want`) and the latch only fires once that
many were counted; otherwise (``want(1)``, the default) every arrival fires it. Arrivals are
counted, never lost: what fired nothing stays counted for the next claim (:meth:`take`).

:meth:`wait` also returns when one of the given tasks (uploads in flight) finishes, so a loop
gathering a batch can stop gathering the moment an upload slot frees up, and a loop waiting for
a slot still hears new arrivals. :meth:`close` (stop) makes every wait return at once, for good.

Pure asyncio, no clock of its own: the timeouts are real seconds (waits are never on the
injected clock), and the tests drive it directly (tests/test_arrivals.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any


class Arrivals:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._count = 0
        self._wanted = 1
        self._closed = False

    @property
    def count(self) -> int:
        """Arrivals counted since the last :meth:`take`."""
        return self._count

    @property
    def closed(self) -> bool:
        return self._closed

    def note(self, arrived: int = 1) -> None:
        """``arrived`` messages were committed; fire once as many as wanted were counted."""
        self._count += arrived
        if self._count >= self._wanted:
            self._event.set()

    def want(self, wanted: int) -> None:
        """Fire only once ``wanted`` arrivals are counted (re-checked now: arrivals counted
        meanwhile may already be enough)."""
        self._wanted = max(1, wanted)
        self.note(0)

    def restart(self, wanted: int) -> None:
        """Forget earlier arrivals and firings; fire once ``wanted`` new ones are counted."""
        self._count = 0
        self._wanted = max(1, wanted)
        if not self._closed:
            self._event.clear()

    def take(self) -> int:
        """The arrivals counted so far, and start counting afresh."""
        taken, self._count = self._count, 0
        return taken

    def poke(self) -> None:
        """Fire regardless of the count (new configuration: look again now)."""
        self._event.set()

    def close(self) -> None:
        """Every wait returns at once from now on (the loop is stopping)."""
        self._closed = True
        self._event.set()

    def settle(self) -> None:
        """Back to firing on every arrival; if arrivals are still counted, fire now, so that
        the next wait does not sleep on messages that are already committed."""
        self._wanted = 1
        if self._count:
            self._event.set()

    async def wait(self, seconds: float, tasks: Collection[asyncio.Future[Any]] = ()) -> bool:
        """Wait until the latch fires (True), or one of ``tasks`` finishes, or ``seconds`` of
        real time pass (False). Firing is consumed (unless closed)."""
        if not self._event.is_set() and not self._closed:
            waiter: asyncio.Future[Any] = asyncio.ensure_future(self._event.wait())
            watched: set[asyncio.Future[Any]] = {waiter, *tasks}
            try:
                await asyncio.wait(
                    watched, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
        fired = self._event.is_set()
        if not self._closed:
            self._event.clear()
        return fired
