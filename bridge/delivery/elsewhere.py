"""Messages for destinations this replica does not know: left to the replicas that do.

Why: during a rolling deploy replicas run different configurations. A replica that did not know
a destination claimed its messages and buried them as ``unknown_destination``: two replicas
where only the new one knew a destination dead-lettered 182 of 600 acknowledged messages. With
a shared queue (PostgreSQL, ``storage.url``) a replica therefore claims only the destinations
it is configured with (``Store.claim(only=)``) and leaves the rest queued. They are never lost:
a replica that knows them delivers them, and if none ever does they stay visible here.

This module counts them now and then (a replica that is idle; one count of the open rows by
destination), keeps the count in the ``synap_bridge_unknown_destination_messages`` gauge and
says so in a warning (``destinations_unknown_here``, at most once a minute while any wait). A
single SQLite ``serve`` has no other replica to leave them to: there, a destination no longer
configured is still buried (``unknown_destination``, replayable once it is configured again).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from bridge import logs
from bridge.metrics import Metrics
from bridge.store import Store

log = logs.get("bridge.delivery.loop")

#: Counting scans the open rows: at most this often, and only when the loop is idle.
COUNT_EVERY_SECS = 10.0
WARN_EVERY_SECS = 60.0


class Elsewhere:
    def __init__(
        self, store: Store, metrics: Metrics | None, monotonic: Callable[[], float]
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._monotonic = monotonic
        self._known: tuple[str, ...] = ()
        self._counted_at: float | None = None
        self._warned_at: float | None = None
        self.waiting = 0

    def configure(self, known: Collection[str]) -> None:
        """Every destination this replica is configured with (dry-run ones included)."""
        self._known = tuple(known)
        self._counted_at = None  # count again soon: what is unknown has changed

    async def check(self, now: float) -> int:
        """Count (at most every :data:`COUNT_EVERY_SECS`) what waits for other destinations."""
        mono = self._monotonic()
        if self._counted_at is not None and mono - self._counted_at < COUNT_EVERY_SECS:
            return self.waiting
        self._counted_at = mono
        stats = await self._store.stats(now)
        known = await self._store.count_open(self._known) if self._known else 0
        self.waiting = max(0, stats.pending + stats.in_flight - known)
        if self._metrics is not None:
            self._metrics.unknown_destination_messages.set(self.waiting)
        if self.waiting and (self._warned_at is None or mono - self._warned_at >= WARN_EVERY_SECS):
            self._warned_at = mono
            log.warning(
                "destinations_unknown_here",
                messages=self.waiting,
                known=list(self._known),
                detail="messages for destinations this replica is not configured with are "
                "left queued for the replicas that are (a rolling deploy?)",
            )
        return self.waiting
