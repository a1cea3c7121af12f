"""Sending: cut claimed messages into batches, upload each on the event loop, record outcomes.

Kept apart from :mod:`bridge.delivery.loop` (which decides *when* to claim and send) so that
what happens to one batch reads in one place: messages that cannot be sent are buried
(unknown destination, over 32 KB), every batch is one task that takes an upload slot, uploads
within the sink's total deadline, records its outcome (:mod:`bridge.delivery.outcomes`), and is
split in halves when Segment says a message in it is wrong. A task cancelled by ``stop`` hands
its batch back through one helper.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from bridge import logs
from bridge.delivery.batching import Batch, plan
from bridge.delivery.outcomes import DrainReport, Outcomes
from bridge.delivery.sinks import Sink, close_all
from bridge.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from bridge.store import ClaimedMessage, DeadReason, Store

log = logs.get("bridge.delivery.loop")

#: Beyond a sink's own total deadline, how long the loop still waits for it. The sink's session
#: cuts the upload at the deadline; this only covers a sink that fails to.
DEADLINE_GRACE_SECS = 5.0


class Uploads:
    def __init__(
        self,
        store: Store,
        outcomes: Outcomes,
        *,
        concurrency: int,
        max_events: int,
        max_bytes: int,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        ack_window_secs: float = float("inf"),
    ) -> None:
        self._store = store
        #: From the start of a batch, how long its ack may still be retried: the lease less the
        #: longest wait between the claim and the start (the batch age).
        self._ack_window_secs = ack_window_secs
        #: Sinks replaced by a reload, closed once no batch in flight uses them.
        self._retiring: set[asyncio.Task[None]] = set()
        self._outcomes = outcomes
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._clock = clock
        self._monotonic = monotonic
        self._slots = asyncio.Semaphore(concurrency)
        self._sinks: dict[str, Sink] = {}
        #: Every batch task not finished yet (stop() waits for them, then cancels).
        self.inflight: set[asyncio.Task[None]] = set()
        #: Batch tasks that have not had an upload slot yet (the loop claims ahead when none).
        self._queued: set[asyncio.Task[None]] = set()
        self._slot_taken = asyncio.Event()

    def use(self, sinks: Mapping[str, Sink]) -> None:
        """New sinks (reload); batches already in flight keep theirs, and the old sinks' sessions
        close once those batches are done."""
        kept = {id(sink) for sink in sinks.values()}
        old = [sink for sink in self._sinks.values() if id(sink) not in kept]
        self._sinks = dict(sinks)
        if old:
            task = asyncio.get_running_loop().create_task(self._retire(old, set(self.inflight)))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, sinks: Sequence[Sink], inflight: set[asyncio.Task[None]]) -> None:
        if inflight:
            await asyncio.wait(inflight)
        await close_all(sinks)

    async def close(self) -> None:
        """Close every sink (after stop: no batch is in flight any more)."""
        if self._retiring:
            await asyncio.wait(set(self._retiring))
        await close_all(list(self._sinks.values()))

    async def start(
        self, claimed: Sequence[ClaimedMessage], report: DrainReport
    ) -> set[asyncio.Task[None]]:
        """Bury what cannot be sent, batch the rest and start one task per batch."""
        report.claimed += len(claimed)
        unknown = [m for m in claimed if m.destination not in self._sinks]
        if unknown:
            names = sorted({m.destination for m in unknown})
            why = DeadReason("unknown_destination", f"no destination configured named {names}")
            await self._outcomes.bury(unknown, why, report)
        known = [m for m in claimed if m.destination in self._sinks]
        sinks = self._sinks
        work = plan(known, self._max_events, self._max_bytes, lambda n: sinks[n].envelope_bytes)
        if work.oversized:
            why = DeadReason("message_too_large", "message is larger than Segment's 32 KB")
            await self._outcomes.bury(work.oversized, why, report)
        acks_until = self._monotonic() + self._ack_window_secs
        tasks = {
            asyncio.create_task(self._deliver(batch, report, acks_until)) for batch in work.batches
        }
        for task in tasks:
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            self._queued.add(task)
            task.add_done_callback(self._queued.discard)
        return tasks

    @property
    def waiting(self) -> int:
        """Batches started that have not had an upload slot yet."""
        return len(self._queued)

    async def wait(self, tasks: set[asyncio.Task[None]]) -> None:
        """Until one of ``tasks`` finishes or a waiting batch gets an upload slot (then the
        loop may claim ahead: :meth:`bridge.delivery.loop.Delivery._free`)."""
        self._slot_taken.clear()
        taken = asyncio.ensure_future(self._slot_taken.wait())
        try:
            await asyncio.wait({*tasks, taken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            taken.cancel()

    async def settle(self, tasks: set[asyncio.Task[None]]) -> None:
        """Wait for every batch task (stop() may cancel them: they hand their batch back)."""
        if tasks:
            await asyncio.wait(tasks)
            self.log_failures(tasks)

    @staticmethod
    def log_failures(tasks: set[asyncio.Task[None]]) -> None:
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery_batch_error", exc_info=task.exception())

    async def _deliver(self, batch: Batch, report: DrainReport, acks_until: float) -> None:
        refused = await self._upload(batch, report, acks_until)
        if refused and len(batch.messages) > 1:
            envelope = self._sinks[batch.destination].envelope_bytes
            halves = batch.halves(envelope)
            await asyncio.gather(*(self._deliver(half, report, acks_until) for half in halves))

    async def _upload(self, batch: Batch, report: DrainReport, acks_until: float) -> bool:
        """Send one batch and record the outcome; True when Segment refused it permanently."""
        sink = self._sinks[batch.destination]
        async with self._handed_back_if_cancelled(batch), self._slot():
            paused = self._outcomes.destinations[batch.destination].paused_until - self._monotonic()
            if paused > 0:  # a sibling batch just met an outage
                resume = self._clock() + paused
                await self._outcomes.hand_back(batch.messages, resume, "destination paused", report)
                return False
            report.batches += 1
            error, latency_ms = await self._send(sink, batch)
            if isinstance(error, TransientDeliveryError):  # before the slot passes on
                self._outcomes.pause(batch.destination, error)
        await asyncio.shield(self._outcomes.record(batch, error, latency_ms, report, acks_until))
        return isinstance(error, PermanentDeliveryError)

    async def _send(self, sink: Sink, batch: Batch) -> tuple[DeliveryError | None, float]:
        """Upload; the error (None on 2xx) and the latency in ms."""
        started = time.perf_counter()
        error: DeliveryError | None = None
        try:
            async with asyncio.timeout(sink.total_timeout_secs + DEADLINE_GRACE_SECS):
                await sink.send(batch.payloads)
        except TimeoutError:  # the sink missed its own deadline (it raises DeliveryErrors)
            error = TransientDeliveryError(
                f"no answer within {sink.total_timeout_secs:g}s (segment.total_timeout_secs)"
            )
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # a bug in a sink must not lose the batch
            log.exception("sink_error", destination=batch.destination)
            error = TransientDeliveryError(f"sink error: {type(exc).__name__}")
        return error, round((time.perf_counter() - started) * 1000, 1)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Hold an upload slot (the task's batch then no longer counts as :attr:`waiting`)."""
        async with self._slots:
            task = asyncio.current_task()
            if task in self._queued:
                self._queued.discard(task)
                self._slot_taken.set()
            yield

    @contextlib.asynccontextmanager
    async def _handed_back_if_cancelled(self, batch: Batch) -> AsyncIterator[None]:
        """If the task is cancelled (stop() after the grace period) while the batch is ours,
        hand it back due now, shielded so the cancellation cannot interrupt the write. Should
        the store fail too, the lease expires and the batch goes out again after a restart."""
        try:
            yield
        except asyncio.CancelledError:
            now = self._clock()
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.retry_later(batch.ids, now, "delivery stopped"))
            raise
