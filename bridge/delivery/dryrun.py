"""Dry-run: show what would be sent to a destination without a write key, and keep it queued.

Why not a sink that logs and reports success (as it was): an empty or missing write key, at
start or through a SIGHUP reload, or a second ``serve`` started from a shell without the
secrets, then marked the whole backlog "delivered" and nothing reached Segment; replay could
not bring it back. Nothing is "delivered" unless a destination accepted it (DESIGN.md).

So the delivery loop never claims a dry-run destination's messages (``Store.claim(exclude=)``),
and this module reads them instead (``Store.peek``, a read that changes nothing) and logs each
once per process, in full: the JSON that would go out (the write key is in the request's
envelope, never in a message). The backlog stays queued and goes out as soon as a write key is
configured (reload or restart). The number waiting is kept in the ``dry_run_messages`` gauge
(and ``synap-bridge stats`` prints it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import orjson

from bridge import logs
from bridge.metrics import Metrics
from bridge.store import Store

log = logs.get("bridge.delivery.loop")

#: Messages read per ``peek``; a round shows at most :data:`ROUND_LIMIT` (the rest next round).
PAGE = 500
ROUND_LIMIT = 5000
#: The waiting count is one indexed scan of the open rows: refreshed at most this often.
COUNT_EVERY_SECS = 5.0


class DryRun:
    def __init__(
        self,
        store: Store,
        metrics: Metrics | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._monotonic = monotonic
        self._destinations: frozenset[str] = frozenset()
        self._after = 0  # the highest message id logged
        self._counted_at: float | None = None

    @property
    def destinations(self) -> frozenset[str]:
        return self._destinations

    def configure(self, destinations: Collection[str]) -> None:
        """The dry-run destinations (at start and after a reload). When they change, their
        backlog is shown again from the start and counted at the next round."""
        chosen = frozenset(destinations)
        if chosen != self._destinations:
            self._destinations = chosen
            self._after = 0
            self._counted_at = None
            if not chosen and self._metrics:
                self._metrics.dry_run_messages.set(0)

    async def show(self) -> int:
        """Log the waiting messages not shown yet (at most :data:`ROUND_LIMIT`); how many."""
        if not self._destinations:
            return 0
        shown = 0
        while shown < ROUND_LIMIT:
            page = await self._store.peek(self._destinations, self._after, PAGE)
            for message in page:
                log.info(
                    "dry_run_message",
                    destination=message.destination,
                    message_id=message.message_id,
                    message=_decoded(message.payload),
                    detail="no write key: not sent, kept queued",
                )
            shown += len(page)
            if page:
                self._after = page[-1].id
            if len(page) < PAGE:
                break
        await self._count(force=shown > 0)
        return shown

    async def _count(self, *, force: bool) -> None:
        now = self._monotonic()
        if not force and self._counted_at is not None and now - self._counted_at < COUNT_EVERY_SECS:
            return
        self._counted_at = now
        waiting = await self._store.count_open(self._destinations)
        if self._metrics:
            self._metrics.dry_run_messages.set(waiting)


def _decoded(payload: bytes) -> Any:
    """The message as JSON (so a JSON log line embeds it), or its text if it is not JSON."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload.decode("utf-8", errors="replace")
